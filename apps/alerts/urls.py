from __future__ import annotations

from django.urls import path

from apps.alerts import views

app_name = "alerts"

urlpatterns = [
    path("", views.rule_list, name="rule-list"),
    path("notices/read/", views.notices_read, name="notices-read"),
    path("projects/<slug:slug>/rules/new/", views.rule_create, name="rule-create"),
    path("rules/<int:pk>/", views.rule_detail, name="rule-detail"),
    path("rules/<int:pk>/edit/", views.rule_edit, name="rule-edit"),
    path("rules/<int:pk>/delete/", views.rule_delete, name="rule-delete"),
    path("deployments/<int:deployment_pk>/", views.deployment_history, name="deployment-history"),
    path("deployments/<int:deployment_pk>/defaults/", views.rule_defaults, name="rule-defaults"),
    path("silences/", views.silence_list, name="silence-list"),
    path("silences/new/", views.silence_create, name="silence-create"),
    path("silences/<int:pk>/expire/", views.silence_expire, name="silence-expire"),
    path("channels/", views.channel_list, name="channel-list"),
    path("projects/<slug:slug>/channels/new/", views.channel_create, name="channel-create"),
    path("channels/<int:pk>/", views.channel_detail, name="channel-detail"),
    path("channels/<int:pk>/test/", views.channel_test, name="channel-test"),
    path("channels/<int:pk>/delete/", views.channel_delete, name="channel-delete"),
]
