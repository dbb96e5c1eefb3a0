from __future__ import annotations

from django.urls import path

from apps.core import views

app_name = "core"

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/", views.project_list, name="project-list"),
    path("projects/<slug:slug>/", views.project_detail, name="project-detail"),
    path("projects/<slug:slug>/audit/", views.audit_log, name="audit-log"),
    path("projects/<slug:slug>/retention/", views.project_retention, name="project-retention"),
    path("projects/<slug:slug>/members/<int:membership_id>/remove/", views.membership_remove, name="member-remove"),
    path("tokens/", views.token_list, name="token-list"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
]
