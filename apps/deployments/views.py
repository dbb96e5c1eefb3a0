"""The deployment pages: the list, and a deployment's detail (traffic split, replicas, strategy progress,
canary analysis, events, try-it, manifests) with promote, rollback, scale and rollout for editors; the parts
the reconciler changes are also served alone, for htmx to poll. Thin: every change goes through a service.
Outsiders get 404, viewers read, editors act."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.cache import get_conditional_response
from django.utils.http import quote_etag
from django.views.decorators.http import require_GET, require_POST

from apps.core.choices import ProjectRole
from apps.core.exceptions import Conflict
from apps.core.filters import filter_page
from apps.core.permissions import has_project_role
from apps.deployments import charts, selectors, services
from apps.deployments.choices import DeploymentStatus
from apps.deployments.filters import DeploymentFilterSet
from apps.deployments.forms import GenerationForm, RolloutForm, ScaleForm, TryItForm
from apps.deployments.models import Deployment
from apps.registry.choices import ModelVersionStage
from apps.telemetry import selectors as telemetry

PAGE_SIZE = 25
EVENTS_PAGE_SIZE = 30
LIVE_POLL_SECONDS = 3
# A masked CSRF token differs on every render; the ETag of the live sections must change only with what they show.
CSRF_INPUT = re.compile(r'<input type="hidden" name="csrfmiddlewaretoken" value="[^"]*">')


def _visible(request: HttpRequest, pk: int) -> Deployment:
    queryset = Deployment.objects.for_user(request.user).select_related("project", "registered_model")
    return get_object_or_404(queryset, pk=pk)


@login_required
@require_GET
def deployment_list(request: HttpRequest) -> HttpResponse:
    deployments = Deployment.objects.for_user(request.user).select_related("project", "registered_model")
    filterset = DeploymentFilterSet(
        request.GET, deployments.prefetch_related("targets__model_version"), request=request
    )
    deployments, status = filter_page(filterset)
    page = Paginator(deployments, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "deployments/deployment_list.html", {"page": page, "filter": filterset}, status=status)


def _example_body(deployment: Deployment) -> str:
    live, _ = selectors.deployment_targets(deployment)
    version = live[0].model_version if live else None
    rows = (version.input_example or [])[:1] if version else []
    return json.dumps({"dataframe_records": rows}, indent=2)


def _version_label(version: Any) -> str:
    if version.stage == ModelVersionStage.NONE:
        return f"v{version.number}"
    return f"v{version.number} ({version.get_stage_display()})"


def _server_version_label(deployment: Deployment) -> Callable[[str], str]:
    """Servers speak in version ids (the registry's primary keys); people read version numbers."""
    labels = {str(pk): f"v{number}" for pk, number in deployment.registered_model.versions.values_list("pk", "number")}
    return lambda version_id: labels.get(str(version_id), f"version id {version_id}")


def _restarts_note(replica: dict[str, Any]) -> str:
    """A crash loop with its restart count and the wait for the next restart, else the count of restarts."""
    restarts = int(replica.get("restarts") or 0)
    count = f"{restarts} restart{'' if restarts == 1 else 's'}"
    if replica.get("crash_loop"):
        wait = max(0, int(float(replica.get("next_restart_at") or 0) - time.time()))
        return f"crash loop — {count}, next restart in {wait}s"
    return count if restarts else ""


def _live_context(request: HttpRequest, deployment: Deployment) -> dict[str, Any]:
    traffic = selectors.deployment_traffic(deployment)
    state = deployment.strategy_state or {}
    decisions = state.get("decisions") or []
    shadow = next((row for row in traffic if row["shadow"]), None)
    shadow_report = (
        selectors.shadow_comparison(deployment=deployment, shadow_version_id=shadow["model_version"])
        if shadow
        else None
    )
    events = Paginator(deployment.events.select_related("actor"), EVENTS_PAGE_SIZE).get_page(request.GET.get("page"))
    label = _server_version_label(deployment)

    replicas = [
        {
            **replica,
            "serves": [(label(v), w) for v, w in (replica.get("traffic") or {}).items()],
            "shadow_label": label(replica["shadow"]) if replica.get("shadow") else None,
            "restarts_note": _restarts_note(replica),
        }
        for replica in (deployment.observed or {}).get("replicas", [])
    ]
    return {
        "deployment": deployment,
        "traffic": traffic,
        "traffic_figure": charts.figure_json(charts.traffic_figure(traffic)),
        "canary_figure": charts.figure_json(charts.canary_figure(decisions)) if decisions else None,
        "decisions": list(reversed(decisions))[:10],
        "state": state,
        "steps": state.get("steps") or [],
        "shadow_report": shadow_report,
        "events": events,
        "replicas": replicas,
        "ready_url": deployment.url,
        "can_edit": has_project_role(request.user, deployment.project, ProjectRole.EDITOR),
        "stopped": deployment.status == DeploymentStatus.STOPPED,
        "active": deployment.phase in services.ACTIVE_PHASES and deployment.status != DeploymentStatus.STOPPED,
        "can_rollback": bool(deployment.rollback_spec) and deployment.status != DeploymentStatus.STOPPED,
        "generation_form": GenerationForm(initial={"generation": deployment.generation}),
        "counts": telemetry.prediction_counts(deployment_id=deployment.pk, since=timezone.now() - timedelta(hours=1)),
    }


def _live(request: HttpRequest, deployment: Deployment) -> dict[str, Any]:
    """The context of the live part of the page: its sections rendered once, and their ETag."""
    context = _live_context(request, deployment)
    sections = render_to_string("deployments/_deployment_live_sections.html", context, request=request)
    etag = quote_etag(hashlib.blake2b(CSRF_INPUT.sub("", sections).encode(), digest_size=16).hexdigest())
    return {
        **context,
        "live_sections": sections,
        "live_etag": etag,
        "live_headers": json.dumps({"If-None-Match": etag}),
        "live_poll": LIVE_POLL_SECONDS,
    }


def _render_detail(
    request: HttpRequest,
    deployment: Deployment,
    *,
    try_form: TryItForm | None = None,
    answer: dict[str, Any] | None = None,
    status: int = 200,
) -> HttpResponse:
    versions = deployment.registered_model.versions.exclude(stage="archived").order_by("-number")
    context = {
        **_live(request, deployment),
        "scale_form": ScaleForm(initial={"generation": deployment.generation, "replicas": deployment.replicas}),
        "rollout_form": RolloutForm(
            versions=[(v.pk, _version_label(v)) for v in versions],
            initial={"generation": deployment.generation},
        ),
        "try_form": try_form or TryItForm(initial={"body": _example_body(deployment), "protocol": "mlflow"}),
        "answer": answer,
    }
    return render(request, "deployments/deployment_detail.html", context, status=status)


@login_required
@require_GET
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _render_detail(request, _visible(request, pk))


@login_required
@require_GET
def deployment_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of a deployment's page, polled by htmx; 304 (and no swap) while it is unchanged."""
    live = _live(request, _visible(request, pk))
    etag = live["live_etag"]
    # Whether polling goes on follows from the status and the replicas, which the sections show: the ETag covers it.
    if not_modified := get_conditional_response(request, etag=etag):
        # htmx would swap the empty body of a 304 in.
        not_modified["HX-Reswap"] = "none"
        not_modified["ETag"] = etag
        return not_modified
    response = render(request, "deployments/_deployment_live.html", live)
    response["ETag"] = etag
    return response


def _act(request: HttpRequest, pk: int, action: Any) -> HttpResponse:
    """Run one editor action with the posted generation (the service checks the role).

    A refusal goes back to the detail page as a message (apps.core.middleware.DomainErrorMiddleware).
    """
    deployment = _visible(request, pk)
    form = GenerationForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The form lacked the deployment's generation; reload the page.")
        return redirect(deployment)
    action(deployment, form.cleaned_data["generation"])
    return redirect(deployment)


@login_required
@require_POST
def deployment_stop(request: HttpRequest, pk: int) -> HttpResponse:
    def stop(deployment: Deployment, generation: int) -> None:
        services.deployment_stop(deployment=deployment, actor=request.user)
        messages.success(request, "Stopped; its model servers are shutting down.")

    return _act(request, pk, stop)


@login_required
@require_POST
def deployment_start(request: HttpRequest, pk: int) -> HttpResponse:
    def start(deployment: Deployment, generation: int) -> None:
        services.deployment_start(deployment=deployment, actor=request.user, expected_generation=generation)
        messages.success(request, "Started; its model servers are coming up.")

    return _act(request, pk, start)


@login_required
@require_POST
def deployment_promote(request: HttpRequest, pk: int) -> HttpResponse:
    def promote(deployment: Deployment, generation: int) -> None:
        services.deployment_promote(deployment=deployment, actor=request.user, expected_generation=generation)
        messages.success(request, "Promoted.")

    return _act(request, pk, promote)


@login_required
@require_POST
def deployment_rollback(request: HttpRequest, pk: int) -> HttpResponse:
    def rollback(deployment: Deployment, generation: int) -> None:
        services.deployment_rollback(deployment=deployment, actor=request.user, expected_generation=generation)
        messages.success(request, "Rolled back.")

    return _act(request, pk, rollback)


@login_required
@require_POST
def deployment_scale(request: HttpRequest, pk: int) -> HttpResponse:
    form = ScaleForm(request.POST)

    def scale(deployment: Deployment, generation: int) -> None:
        if not form.is_valid():
            raise ValidationError(form.errors.get("replicas") or "Give a number of replicas.")
        services.deployment_scale(
            deployment=deployment,
            actor=request.user,
            replicas=form.cleaned_data["replicas"],
            expected_generation=generation,
        )
        messages.success(request, f"Scaling to {form.cleaned_data['replicas']} replicas.")

    return _act(request, pk, scale)


@login_required
@require_POST
def deployment_rollout(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = _visible(request, pk)
    versions = list(deployment.registered_model.versions.values_list("pk", "number"))
    form = RolloutForm(request.POST, versions=[(v, f"v{n}") for v, n in versions])

    def rollout(deployment: Deployment, generation: int) -> None:
        if not form.is_valid():
            raise ValidationError("; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        services.deployment_rollout(
            deployment=deployment,
            model_version=form.cleaned_data["model_version"],
            strategy=form.cleaned_data["strategy"],
            traffic_percentage=form.cleaned_data["traffic_percentage"],
            actor=request.user,
            expected_generation=generation,
        )
        messages.success(request, "Rollout started.")

    return _act(request, pk, rollout)


@login_required
@require_POST
def deployment_try(request: HttpRequest, pk: int) -> HttpResponse:
    """Send one prediction to a ready replica and show its answer (any member may)."""
    deployment = _visible(request, pk)
    form = TryItForm(request.POST)
    if not form.is_valid():
        return _render_detail(request, deployment, try_form=form, status=400)
    try:
        json.loads(form.cleaned_data["body"])
    except ValueError as exc:
        form.add_error("body", f"Not valid JSON: {exc}")
        return _render_detail(request, deployment, try_form=form, status=400)
    try:
        answer = services.deployment_predict(
            deployment=deployment, body=form.cleaned_data["body"], protocol=form.cleaned_data["protocol"]
        )
    except Conflict as exc:
        form.add_error(None, str(exc))
        return _render_detail(request, deployment, try_form=form, status=409)
    except OSError as exc:
        form.add_error(None, f"The model server did not answer: {exc}")
        return _render_detail(request, deployment, try_form=form, status=502)
    return _render_detail(request, deployment, try_form=form, answer=answer)


@login_required
@require_GET
def deployment_manifests(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = _visible(request, pk)
    response = HttpResponse(services.deployment_manifests(deployment), content_type="application/yaml")
    response["Content-Disposition"] = f'attachment; filename="{deployment.name}.yaml"'
    return response
