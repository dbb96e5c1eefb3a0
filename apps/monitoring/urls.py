from __future__ import annotations

from django.urls import path

from apps.monitoring import views, views_drift_settings, views_health

app_name = "monitoring"

urlpatterns = [
    path("drift/", views.report_list, name="report-list"),
    path("drift/<int:pk>/", views.report_detail, name="report-detail"),
    path("drift/run/<int:deployment_pk>/", views.report_run, name="report-run"),
    path("health/", views_health.health, name="health"),
    path("drift/settings/<int:deployment_pk>/", views_drift_settings.drift_settings, name="drift-settings"),
]
