"""The system health page: staff see the whole installation, every user the model servers of their projects."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.monitoring.health import system_health


@login_required
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    report = system_health(user=request.user)
    template = "monitoring/_health_body.html" if request.headers.get("HX-Request") else "monitoring/health.html"
    return render(request, template, {"health": report})
