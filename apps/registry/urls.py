from __future__ import annotations

from django.urls import path

from apps.registry import views

app_name = "registry"

urlpatterns = [
    path("models/", views.model_list, name="model-list"),
    path("models/register/", views.model_register, name="model-register"),
    path("models/<int:pk>/", views.model_detail, name="model-detail"),
    path("models/<int:pk>/compare/", views.version_compare, name="version-compare"),
    path("models/<int:pk>/versions/<int:number>/", views.version_detail, name="version-detail"),
    path("models/<int:pk>/versions/<int:number>/load-test/", views.version_load_test, name="version-load-test"),
    path("models/<int:pk>/versions/<int:number>/download/", views.version_download, name="version-download"),
    path("models/<int:pk>/versions/<int:number>/request/", views.request_create, name="request-create"),
    path("approvals/", views.approval_inbox, name="approval-inbox"),
    path("approvals/<int:pk>/", views.request_detail, name="request-detail"),
    path("approvals/<int:pk>/approve/", views.request_approve, name="request-approve"),
    path("approvals/<int:pk>/reject/", views.request_reject, name="request-reject"),
    path("approvals/<int:pk>/withdraw/", views.request_withdraw, name="request-withdraw"),
    path("notifications/", views.notification_list, name="notification-list"),
    path("notifications/read/", views.notifications_read, name="notifications-read"),
    path("webhooks/", views.webhook_list, name="webhook-list"),
    path("webhooks/<int:pk>/", views.webhook_detail, name="webhook-detail"),
    path("webhooks/<int:pk>/delete/", views.webhook_delete, name="webhook-delete"),
]
