from __future__ import annotations

from django.urls import path

from apps.monitoring import views
from apps.monitoring.api import DeploymentMetricsApi, DeploymentPerformanceTrendApi

app_name = "monitoring"

urlpatterns = [
    path("drift/", views.report_list, name="report-list"),
    path("drift/<int:pk>/", views.report_detail, name="report-detail"),
    path("drift/run/<int:deployment_pk>/", views.report_run, name="report-run"),
    path("deployments/", views.dashboard_list, name="dashboard-list"),
    path("deployments/<int:pk>/", views.deployment_dashboard, name="dashboard"),
    path("deployments/<int:pk>/performance/", views.deployment_performance, name="performance"),
    path("deployments/<int:pk>/live/", views.deployment_dashboard_live, name="dashboard-live"),
]

# Mounted under /api/v1/ beside the router's routes.
api_urlpatterns = [
    path("deployments/<int:deployment_id>/metrics/", DeploymentMetricsApi.as_view(), name="deployment-metrics"),
    path(
        "deployments/<int:deployment_id>/performance-trend/",
        DeploymentPerformanceTrendApi.as_view(),
        name="deployment-performance-trend",
    ),
]
