"""Telemetry's API routes, mounted under /api/v1/ (model servers find them through CONSOLE_INTERNAL_URL)."""

from __future__ import annotations

from django.urls import path

from apps.telemetry.api import DeploymentPerformanceApi, FeedbackApi, PredictionIngestApi

api_urlpatterns = [
    path("ingest/predictions/", PredictionIngestApi.as_view(), name="ingest-predictions"),
    path("feedback/", FeedbackApi.as_view(), name="feedback"),
    path(
        "deployments/<int:deployment_id>/performance/",
        DeploymentPerformanceApi.as_view(),
        name="deployment-performance",
    ),
]
