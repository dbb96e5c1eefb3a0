from __future__ import annotations

from django.urls import path

from apps.deployments import views

app_name = "deployments"

urlpatterns = [
    path("", views.deployment_list, name="deployment-list"),
    path("<int:pk>/", views.deployment_detail, name="deployment-detail"),
    path("<int:pk>/live/", views.deployment_live, name="deployment-live"),
    path("<int:pk>/promote/", views.deployment_promote, name="deployment-promote"),
    path("<int:pk>/stop/", views.deployment_stop, name="deployment-stop"),
    path("<int:pk>/start/", views.deployment_start, name="deployment-start"),
    path("<int:pk>/rollback/", views.deployment_rollback, name="deployment-rollback"),
    path("<int:pk>/scale/", views.deployment_scale, name="deployment-scale"),
    path("<int:pk>/rollout/", views.deployment_rollout, name="deployment-rollout"),
    path("<int:pk>/try/", views.deployment_try, name="deployment-try"),
    path("<int:pk>/manifests.yaml", views.deployment_manifests, name="deployment-manifests"),
]
