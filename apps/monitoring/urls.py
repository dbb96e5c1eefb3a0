from __future__ import annotations

from django.urls import path

from apps.monitoring import views, views_drift_settings, views_health
from apps.monitoring.api import DeploymentMetricsApi, DeploymentPerformanceTrendApi
from apps.monitoring.api_drift_settings import DriftSettingsApi
from apps.monitoring.api_health import SystemHealthApi

app_name = "monitoring"

urlpatterns = [
    path("drift/", views.report_list, name="report-list"),
    path("drift/<int:pk>/", views.report_detail, name="report-detail"),
    path("drift/run/<int:deployment_pk>/", views.report_run, name="report-run"),
    path("drift/settings/<int:deployment_pk>/", views_drift_settings.drift_settings, name="drift-settings"),
    path("deployments/", views.dashboard_list, name="dashboard-list"),
    path("deployments/<int:pk>/", views.deployment_dashboard, name="dashboard"),
    path("deployments/<int:pk>/performance/", views.deployment_performance, name="performance"),
    path("deployments/<int:pk>/live/", views.deployment_dashboard_live, name="dashboard-live"),
    path("health/", views_health.health, name="health"),
]

# Mounted under /api/v1/ beside the router's routes.
api_urlpatterns = [
    path("deployments/<int:deployment_id>/metrics/", DeploymentMetricsApi.as_view(), name="deployment-metrics"),
    path(
        "deployments/<int:deployment_id>/performance-trend/",
        DeploymentPerformanceTrendApi.as_view(),
        name="deployment-performance-trend",
    ),
    path("health/", SystemHealthApi.as_view(), name="system-health"),
    path("drift-settings/<int:deployment_id>/", DriftSettingsApi.as_view(), name="drift-settings"),
]
