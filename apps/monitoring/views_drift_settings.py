"""The drift settings page of a deployment: a test and a threshold per column, the dataset drift share, and
prediction drift on or off. Viewers read it; editors save it (the service checks the role and every value)."""

from __future__ import annotations

import math
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from apps.core.choices import ProjectRole
from apps.core.exceptions import ValidationError
from apps.core.permissions import has_project_role, require_project_role
from apps.deployments.models import Deployment
from apps.monitoring.api_drift_settings import settings_body
from apps.monitoring.drift_settings import drift_settings_update
from apps.monitoring.services import live_version
from worker.monitoring.drift import TESTS


def _number(raw: str, field: str) -> float | None:
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(f"{raw!r} is not a number.", field=field) from None
    if not math.isfinite(value):
        raise ValidationError(f"{raw!r} is not a finite number.", field=field)
    return value


def _posted(request: HttpRequest, columns: dict[str, str]) -> dict[str, Any]:
    overrides = {}
    for name in columns:
        test = request.POST.get(f"test:{name}", "") or None
        threshold = _number(request.POST.get(f"threshold:{name}", ""), f"columns.{name}.threshold")
        if test is not None or threshold is not None:
            overrides[name] = {"test": test, "threshold": threshold}
    share = _number(request.POST.get("drift_share", ""), "drift_share")
    return {
        "columns": overrides,
        "drift_share": share,
        "prediction_drift": request.POST.get("prediction_drift") == "on",
    }


@login_required
@require_http_methods(["GET", "POST"])
def drift_settings(request: HttpRequest, deployment_pk: int) -> HttpResponse:
    deployment = get_object_or_404(
        Deployment.objects.for_user(request.user).select_related("project", "registered_model"), pk=deployment_pk
    )
    body = settings_body(deployment)
    error, status = None, 200
    if request.method == "POST":
        # Before the posted values are read: a viewer's bad value is a 403 too, not a 400.
        require_project_role(request.user, deployment.project, ProjectRole.EDITOR)
        try:
            drift_settings_update(
                deployment=deployment,
                actor=request.user,
                version=live_version(deployment),
                **_posted(request, body["available_columns"]),
            )
        except ValidationError as exc:
            error, status = (exc.field, str(exc)), 400
        else:
            messages.success(request, "Drift settings saved; the next report uses them.")
            return redirect("monitoring:drift-settings", deployment_pk=deployment.pk)
    rows = [
        {
            "name": name,
            "kind": kind,
            "test": (body["columns"].get(name) or {}).get("test") or "",
            "threshold": (body["columns"].get(name) or {}).get("threshold"),
        }
        for name, kind in body["available_columns"].items()
    ]
    context = {
        "deployment": deployment,
        "settings": body,
        "rows": rows,
        "tests": TESTS,
        "error": error,
        "can_edit": has_project_role(request.user, deployment.project, ProjectRole.EDITOR),
    }
    return render(request, "monitoring/drift_settings.html", context, status=status)
