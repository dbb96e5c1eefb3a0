"""The A/B test pages: the list, the create form with the power calculator, and a test's readout. Thin: every
change goes through a service, which checks the role; outsiders get 404, viewers read, editors act."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.abtests import charts, selectors, services
from apps.abtests.choices import DECISION_COLOURS
from apps.abtests.filters import ABTestFilterSet
from apps.abtests.forms import ABTestForm
from apps.abtests.models import ABTest
from apps.core.choices import ProjectRole
from apps.core.exceptions import DomainError
from apps.core.filters import filter_page
from apps.core.permissions import has_project_role, require_project_role
from apps.deployments.models import Deployment

PAGE_SIZE = 25


@login_required
@require_GET
def abtest_list(request: HttpRequest) -> HttpResponse:
    filterset = ABTestFilterSet(request.GET, selectors.abtests(user=request.user), request=request)
    tests, status = filter_page(filterset)
    page = Paginator(tests, PAGE_SIZE).get_page(request.GET.get("page"))
    deployments = Deployment.objects.for_user(request.user).active().select_related("project")
    context = {"page": page, "filter": filterset, "deployments": deployments}
    return render(request, "abtests/abtest_list.html", context, status=status)


def _form_error(form: ABTestForm, exc: DomainError | DjangoValidationError) -> None:
    field = getattr(exc, "field", None)
    if field is None and hasattr(exc, "message_dict"):
        field, messages = next(iter(exc.message_dict.items()))
        message = " ".join(messages)
    else:
        message = exc.messages[0] if hasattr(exc, "messages") else str(exc)
    form.add_error(field if field in form.fields else None, message)


@login_required
@require_http_methods(["GET", "POST"])
def abtest_create(request: HttpRequest) -> HttpResponse:
    """GET ?deployment=<id>: the form; POST with `calculate`: the power calculator's answer; POST: create."""
    deployment_id = request.GET.get("deployment") or request.POST.get("deployment") or ""
    deployment = get_object_or_404(
        Deployment.objects.for_user(request.user).select_related("project", "registered_model"),
        pk=int(deployment_id) if deployment_id.isdigit() else 0,
    )
    require_project_role(request.user, deployment.project, ProjectRole.EDITOR)
    versions = list(deployment.registered_model.versions.order_by("number"))
    live = list(deployment.targets.filter(shadow=False).order_by("-weight").values_list("model_version_id", flat=True))
    initial = {"control": live[0] if live else None, "primary_metric": "conversion", "sequential": True}
    form = ABTestForm(request.POST or None, versions=versions, initial=initial)
    plan, per_day = None, selectors.traffic_per_day(deployment_id=deployment.pk)
    status = 200
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        arguments: dict[str, Any] = {
            "deployment": deployment,
            "primary_metric": data["primary_metric"],
            "baseline": data["baseline"],
            "mde": data["mde"],
            "split": data["split"],
            "mde_relative": data["mde_relative"],
            "baseline_sd": data["baseline_sd"],
            "alpha": data["alpha"],
            "power_": data["power"],
            "sequential": data["sequential"],
        }
        try:
            if "calculate" in request.POST:
                plan = services.abtest_power_plan(**arguments)
            else:
                abtest = services.abtest_create(
                    **arguments,
                    actor=request.user,
                    name=data["name"],
                    control=data["control"],
                    treatments=data["treatments"],
                    planned_sample_size=data["planned_sample_size"],
                    guardrails=form.guardrails(),
                    assignment_key=data["assignment_key"],
                    description=data["description"],
                )
                return redirect(abtest)
        except (DomainError, DjangoValidationError) as exc:
            _form_error(form, exc)
    if request.method == "POST" and form.errors:
        status = 400
    context = {"form": form, "deployment": deployment, "plan": plan, "traffic_per_day": per_day}
    return render(request, "abtests/abtest_form.html", context, status=status)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _interval(low: float | None, high: float | None, percent: bool = False) -> str:
    if low is None or high is None:
        return "–"
    text = _pct if percent else _num
    return f"[{text(low)}, {text(high)}]"


def _comparison_rows(engine: dict) -> list[dict[str, Any]]:
    rows = []
    for c in engine["comparisons"]:
        fixed, sequential, bayes = c["fixed"], c["sequential"], c["bayesian"]
        rows.append(
            {
                "arm": c["arm"],
                "decision": c["decision"],
                "colour": DECISION_COLOURS.get(c["decision"], "secondary"),
                "reason": c["reason"],
                "difference": _num(fixed["difference"]),
                "lift": _pct(fixed["lift"]),
                "ci": _interval(fixed["ci_low"], fixed["ci_high"]),
                "lift_ci": _interval(fixed["lift_ci_low"], fixed["lift_ci_high"], percent=True),
                "cs": _interval(sequential["cs_low"], sequential["cs_high"]),
                "lift_cs": _interval(sequential["lift_cs_low"], sequential["lift_cs_high"], percent=True),
                "p_fixed": _num(fixed["p_value"]),
                "p_fixed_holm": _num(c["p_value_holm"]),
                "p_sequential": _num(sequential["p_value"]),
                "p_sequential_holm": _num(c["sequential_p_value_holm"]),
                "prob_better": _pct(bayes["prob_treatment_better"]),
                "loss_treatment": _num(bayes["expected_loss_treatment"]),
                "loss_control": _num(bayes["expected_loss_control"]),
                "bayes_reason": bayes["reason"],
                "guardrails": [
                    {
                        "name": g["name"],
                        "margin": _num(g["margin"]),
                        "deterioration": _num(g["deterioration"]),
                        "interval": _interval(g["deterioration_low"], g["deterioration_high"]),
                        "breached": g["breached"],
                        "reason": g["reason"],
                    }
                    for g in c["guardrails"]
                ],
            }
        )
    return rows


@login_required
@require_GET
def abtest_detail(request: HttpRequest, pk: int) -> HttpResponse:
    abtest = get_object_or_404(selectors.abtests(user=request.user), pk=pk)
    latest = selectors.latest_readout(abtest)
    history = list(selectors.readouts(abtest).order_by("as_of", "id"))
    arms_rows = []
    if latest is not None:
        for arm in latest.result["arms"]:
            arms_rows.append(
                {
                    **arm,
                    "mean_text": _num(arm["mean"]),
                    "error_rate_text": _pct(arm["error_rate"]),
                    "p99_text": _num(arm["p99_ms"]),
                    "share": arm["assigned"] / max(1, sum(a["assigned"] for a in latest.result["arms"])),
                }
            )
    context = {
        "abtest": abtest,
        "arms": selectors.arms(abtest),
        "latest": latest,
        "arm_rows": arms_rows,
        "comparisons": _comparison_rows(latest.result["engine"]) if latest is not None else [],
        "srm_p_text": _num(latest.srm_p_value) if latest is not None else "–",
        "lift_figure": charts.figure_json(charts.lift_figure(abtest, history)) if history else None,
        "can_edit": has_project_role(request.user, abtest.deployment.project, ProjectRole.EDITOR),
        "traffic_per_day": selectors.traffic_per_day(deployment_id=abtest.deployment_id),
    }
    return render(request, "abtests/abtest_detail.html", context)


def _editable(request: HttpRequest, pk: int) -> ABTest:
    return get_object_or_404(selectors.abtests(user=request.user), pk=pk)


@login_required
@require_POST
def abtest_start(request: HttpRequest, pk: int) -> HttpResponse:
    abtest = services.abtest_start(abtest=_editable(request, pk), actor=request.user)
    return redirect(abtest)


@login_required
@require_POST
def abtest_stop(request: HttpRequest, pk: int) -> HttpResponse:
    abtest = services.abtest_stop(abtest=_editable(request, pk), actor=request.user)
    return redirect(abtest)


@login_required
@require_POST
def abtest_readout(request: HttpRequest, pk: int) -> HttpResponse:
    abtest = _editable(request, pk)
    services.abtest_readout_compute(abtest=abtest, actor=request.user)
    return redirect(abtest)


@login_required
@require_POST
def abtest_promote(request: HttpRequest, pk: int) -> HttpResponse:
    promotion = services.abtest_promote_winner(
        abtest=_editable(request, pk), actor=request.user, comment=request.POST.get("comment", "")
    )
    return redirect(promotion)
