from __future__ import annotations

from django.urls import path

from apps.datasets import views

app_name = "datasets"

urlpatterns = [
    path("", views.dataset_list, name="dataset-list"),
    path("new/", views.dataset_create, name="dataset-create"),
    path("<int:pk>/", views.dataset_detail, name="dataset-detail"),
    path("<int:pk>/upload/", views.dataset_upload, name="dataset-upload"),
    path("<int:pk>/rules/", views.dataset_rules, name="dataset-rules"),
    path("<int:pk>/compare/", views.version_compare, name="version-compare"),
    path("<int:pk>/versions/<int:number>/status/", views.version_status, name="version-status"),
    path("<int:pk>/versions/<int:number>/revalidate/", views.version_revalidate, name="version-revalidate"),
    path("<int:pk>/versions/<int:number>/download/", views.version_download, name="version-download"),
]
