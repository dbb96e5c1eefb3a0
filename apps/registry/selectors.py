"""Reads of the registry: lists, the approvals inbox, gate checks, lineage, comparisons and event recipients."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.db.models import Count, F, Func, Prefetch, Q, QuerySet, Subquery

from apps.core.choices import ProjectRole
from apps.core.models import Membership, Project
from apps.registry.choices import GateCheckStatus, ModelVersionStage, RegistryEventType
from apps.registry.models import (
    ModelAlias,
    ModelVersion,
    Notification,
    PromotionRequest,
    RegisteredModel,
    RegistryEvent,
)
from serving.signature import signature_diff, signatures_compatible
from worker.training.evaluate import LOWER_IS_BETTER

APPROVER_ROLES = (ProjectRole.APPROVER, ProjectRole.OWNER)
EDITOR_ROLES = (ProjectRole.EDITOR, ProjectRole.APPROVER, ProjectRole.OWNER)
# Metrics not named by the trainer where lower is also better.
_ALSO_LOWER_IS_BETTER = frozenset({"mse", "mape", "error", "loss", "latency_ms"})
# Stage moves that need no gate: taking a version out of service is always allowed.
UNGATED_STAGES = frozenset({ModelVersionStage.ARCHIVED, ModelVersionStage.NONE})


# Models and versions


def model_list(*, user: object) -> QuerySet[RegisteredModel]:
    models = RegisteredModel.objects.for_user(user).select_related("project")
    production = ModelVersion.objects.filter(stage=ModelVersionStage.PRODUCTION).only("id", "model_id", "number")
    return (
        models.annotate(version_count=Count("versions", distinct=True))
        .order_by("project__name", "name", "pk")
        .prefetch_related(
            Prefetch("versions", queryset=production, to_attr="production_versions"),
            Prefetch(
                "aliases",
                queryset=ModelAlias.objects.select_related("version").only("id", "name", "model_id", "version__number"),
            ),
        )
    )


def model_versions(model: RegisteredModel) -> QuerySet[ModelVersion]:
    return model.versions.select_related("created_by").prefetch_related("aliases")


def production_version(model: RegisteredModel, *, exclude: ModelVersion | None = None) -> ModelVersion | None:
    versions = model.versions.filter(stage=ModelVersionStage.PRODUCTION)
    if exclude is not None:
        versions = versions.exclude(pk=exclude.pk)
    return versions.first()


def model_timeline(model: RegisteredModel, *, limit: int = 30) -> list[RegistryEvent]:
    return list(model.events.select_related("actor")[:limit])


# Promotion requests


def approvable_projects(user: object) -> QuerySet[Project]:
    """Projects where the user may approve (approver or owner; staff everywhere)."""
    if not getattr(user, "is_authenticated", False):
        return Project.objects.none()
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user, memberships__role__in=APPROVER_ROLES)


def pending_approvals(user: object) -> QuerySet[PromotionRequest]:
    """Open requests this user could decide: where they approve, made by someone else, not yet decided by them."""
    return (
        PromotionRequest.objects.open()
        .filter(model__project__in=approvable_projects(user))
        .exclude(requested_by=user)
        .exclude(approvals__approver=user)
    )


def navigation_badges(user: object) -> dict[str, int]:
    """Both navigation badges (approvals waiting, unread notifications) in one query, kept for the request.

    `request.user` lives as long as the request, so the counts are computed once per page.
    """
    if not getattr(user, "is_authenticated", False):
        return {"pending": 0, "unread": 0}
    cached = getattr(user, "_registry_badges", None)
    if cached is None:
        pending = pending_approvals(user).order_by().values("pk")
        unread = Notification.objects.filter(user=user, read_at__isnull=True).order_by().values("pk")
        counts = (
            get_user_model()
            .objects.filter(pk=user.pk)
            .values(
                pending=Subquery(pending.annotate(n=Func(F("pk"), function="COUNT")).values("n")[:1]),
                unread=Subquery(unread.annotate(n=Func(F("pk"), function="COUNT")).values("n")[:1]),
            )
        )
        row = counts.first() or {}
        cached = {"pending": row.get("pending") or 0, "unread": row.get("unread") or 0}
        user._registry_badges = cached
    return cached


def pending_approvals_badge(user: object) -> int:
    """The Approvals badge in the navigation (shares one query with the notifications badge)."""
    return navigation_badges(user)["pending"]


def unread_notifications_badge(user: object) -> int:
    return navigation_badges(user)["unread"]


def request_list(*, user: object, status: str = "", model: int | None = None) -> QuerySet:
    requests = PromotionRequest.objects.for_user(user).select_related(
        "model__project", "version", "requested_by", "decided_by"
    )
    if status:
        requests = requests.filter(status=status)
    if model:
        requests = requests.filter(model_id=model)
    approvals = Count("approvals", filter=Q(approvals__decision="approve"), distinct=True)
    return requests.annotate(approval_count=approvals).order_by("-created_at", "-id")


# Gate checks


def _lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric in _ALSO_LOWER_IS_BETTER


def metric_comparison(candidate: dict[str, Any], reference: dict[str, Any]) -> list[dict[str, Any]]:
    """Per metric both values have: the delta and whether the candidate is better, worse or the same."""
    rows = []
    for name in sorted(set(candidate) & set(reference)):
        new, old = candidate[name], reference[name]
        if not isinstance(new, int | float) or not isinstance(old, int | float):
            continue
        delta = float(new) - float(old)
        if abs(delta) < 1e-12:
            verdict = "same"
        elif (delta < 0) == _lower_is_better(name):
            verdict = "better"
        else:
            verdict = "worse"
        rows.append({"name": name, "candidate": new, "reference": old, "delta": delta, "verdict": verdict})
    return rows


def _check(name: str, status: str, message: str, **details: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "message": message, "details": details}


def promotion_gate_checks(*, version: ModelVersion, target_stage: str = "") -> list[dict[str, Any]]:
    """The checks a promotion shows and an approval re-runs; a `fail` blocks approval unless an owner overrides.

    Demotions (to archived or none) have no gates. Comparisons are with the model's current production
    version, other than this one.
    """
    if target_stage in UNGATED_STAGES:
        return []
    checks = []
    failures = version.validation.get("failures") or []
    if version.validation_passed is None:
        checks.append(_check("validation", GateCheckStatus.WARN, "No validation thresholds were recorded."))
    elif version.validation_passed:
        count = len(version.validation.get("thresholds") or {})
        message = "The validation threshold passed." if count == 1 else f"All {count} validation thresholds passed."
        checks.append(_check("validation", GateCheckStatus.PASS, message))
    else:
        message = "Validation thresholds not met: " + "; ".join(failures or ["(no details recorded)"])
        checks.append(_check("validation", GateCheckStatus.FAIL, message, failures=failures))

    production = production_version(version.model, exclude=version)
    if production is None:
        checks.append(_check("signature", GateCheckStatus.SKIP, "No version is in production to compare with."))
        checks.append(_check("metrics", GateCheckStatus.SKIP, "No version is in production to compare with."))
    else:
        diff = signature_diff(production.signature, version.signature)
        if signatures_compatible(production.signature, version.signature):
            checks.append(
                _check(
                    "signature",
                    GateCheckStatus.PASS,
                    f"The input signature is compatible with production version {production.number}.",
                    diff=diff,
                )
            )
        else:
            checks.append(
                _check(
                    "signature",
                    GateCheckStatus.FAIL,
                    f"The input signature is incompatible with production version {production.number}: "
                    + describe_signature_diff(diff),
                    diff=diff,
                )
            )
        rows = metric_comparison(version.metrics, production.metrics)
        worse = [row["name"] for row in rows if row["verdict"] == "worse"]
        if not rows:
            status, message = GateCheckStatus.WARN, f"No metric in common with production version {production.number}."
        elif worse:
            status = GateCheckStatus.WARN
            message = f"Worse than production version {production.number} on {', '.join(worse)}."
        else:
            status, message = GateCheckStatus.PASS, f"No metric worse than production version {production.number}."
        checks.append(_check("metrics", status, message, comparison=rows, reference_version=production.number))

    dataset_version = version.dataset_version
    if dataset_version is None:
        checks.append(_check("dataset", GateCheckStatus.SKIP, "No dataset version is recorded for this model."))
    elif dataset_version.blocking_failed:
        checks.append(
            _check(
                "dataset", GateCheckStatus.FAIL, f"Dataset version {dataset_version} failed a blocking validation rule."
            )
        )
    elif not dataset_version.is_ready:
        checks.append(
            _check("dataset", GateCheckStatus.WARN, f"Dataset version {dataset_version} is not validated yet.")
        )
    else:
        checks.append(_check("dataset", GateCheckStatus.PASS, f"Dataset version {dataset_version} passed validation."))
    return checks


def describe_signature_diff(diff: dict[str, Any]) -> str:
    parts = []
    if diff["removed"]:
        parts.append("removed " + ", ".join(diff["removed"]))
    if diff["added"]:
        parts.append("added " + ", ".join(diff["added"]))
    for change in diff["changed"]:
        parts.append(f"{change['name']} {change['old']['type']} → {change['new']['type']}")
    if diff["output"]:
        parts.append("the output changed")
    return "; ".join(parts) or "no differences"


def version_compare(a: ModelVersion, b: ModelVersion) -> dict[str, Any]:
    """Side by side: metrics, parameters, the signature diff from `a` to `b` and whether `b` can replace `a`."""
    metric_names = sorted(set(a.metrics) | set(b.metrics))
    param_names = sorted(set(a.params) | set(b.params))
    comparison = {row["name"]: row for row in metric_comparison(b.metrics, a.metrics)}
    diff = signature_diff(a.signature, b.signature)
    return {
        "metrics": [
            {"name": n, "a": a.metrics.get(n), "b": b.metrics.get(n), "verdict": comparison.get(n, {}).get("verdict")}
            for n in metric_names
        ],
        "params": [
            {"name": n, "a": a.params.get(n), "b": b.params.get(n), "differs": a.params.get(n) != b.params.get(n)}
            for n in param_names
        ],
        "signature_diff": diff,
        "signature_summary": describe_signature_diff(diff),
        "compatible": signatures_compatible(a.signature, b.signature),
    }


# Lineage


def version_lineage(version: ModelVersion) -> dict[str, list[dict[str, Any]]]:
    """Nodes and edges of dataset version → split → run → model version → deployments.

    Extension point: any model of another app with a foreign key to ModelVersion whose app label is
    `deployments` becomes a node to the right of the version (e.g. `Deployment.model_version`), found through
    the reverse relation, so the registry needs no import of that app. Each such row contributes its `str()`
    and, when it has one, its `get_absolute_url()`.
    """
    nodes: list[dict[str, Any]] = []
    edges: list[tuple[str, str]] = []

    def add(key: str, kind: str, label: str, url: str = "", layer: int = 0) -> str:
        nodes.append({"id": key, "kind": kind, "label": label, "url": url, "layer": layer})
        return key

    me = add(f"version:{version.pk}", "model version", str(version), version.get_absolute_url(), 3)
    upstream = me
    run = getattr(version, "run", None)
    if run is not None:
        url = run.get_absolute_url() if hasattr(run, "get_absolute_url") else ""
        upstream = add(f"run:{run.pk}", "run", str(run), url, 2)
        edges.append((upstream, me))
    pipeline_run = getattr(version, "pipeline_run", None)
    if pipeline_run is not None:
        url = pipeline_run.get_absolute_url() if hasattr(pipeline_run, "get_absolute_url") else ""
        node = add(f"pipeline:{pipeline_run.pk}", "pipeline run", str(pipeline_run), url, 1)
        edges.append((node, upstream))
    if version.dataset_version_id:
        dataset_version = version.dataset_version
        data = add(
            f"dataset:{dataset_version.pk}",
            "dataset version",
            f"{dataset_version.dataset.name} v{dataset_version.number}",
            dataset_version.get_absolute_url(),
            0,
        )
        target = upstream
        if version.dataset_split_id:
            split = add(f"split:{version.dataset_split_id}", "split", str(version.dataset_split), "", 1)
            edges.append((data, split))
            data = split
        edges.append((data, target))
    for relation in ModelVersion._meta.related_objects:
        if relation.related_model._meta.app_label != "deployments" or not apps.is_installed("apps.deployments"):
            continue
        accessor = relation.get_accessor_name()
        for row in getattr(version, accessor).all()[:20]:
            url = row.get_absolute_url() if hasattr(row, "get_absolute_url") else ""
            node = add(f"deployment:{relation.related_model._meta.model_name}:{row.pk}", "deployment", str(row), url, 4)
            edges.append((me, node))
    return {"nodes": nodes, "edges": [{"source": s, "target": t} for s, t in edges]}


# Event recipients


def event_recipients(event: RegistryEvent) -> list[Any]:
    """Who hears of an event: approvers of new requests, the requester of decisions, editors of the rest."""
    users = get_user_model().objects.filter(is_active=True)
    kind = event.type
    if kind in (RegistryEventType.REQUEST_CREATED, RegistryEventType.REQUEST_WITHDRAWN):
        roles: tuple[str, ...] = APPROVER_ROLES
    elif kind in (
        RegistryEventType.REQUEST_APPROVED,
        RegistryEventType.REQUEST_REJECTED,
        RegistryEventType.REQUEST_EXPIRED,
    ):
        requester_id = event.request.requested_by_id if event.request_id else None
        if requester_id is None or requester_id == event.actor_id:
            return []
        return list(users.filter(pk=requester_id))
    else:
        roles = EDITOR_ROLES
    member_ids = Membership.objects.filter(project_id=event.project_id, role__in=roles).values("user_id")
    recipients = users.filter(pk__in=member_ids)
    if event.actor_id:
        recipients = recipients.exclude(pk=event.actor_id)
    return list(recipients.order_by("pk"))
