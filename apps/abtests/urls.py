from __future__ import annotations

from django.urls import path

from apps.abtests import views

app_name = "abtests"

urlpatterns = [
    path("", views.abtest_list, name="abtest-list"),
    path("new/", views.abtest_create, name="abtest-create"),
    path("<int:pk>/", views.abtest_detail, name="abtest-detail"),
    path("<int:pk>/start/", views.abtest_start, name="abtest-start"),
    path("<int:pk>/stop/", views.abtest_stop, name="abtest-stop"),
    path("<int:pk>/readout/", views.abtest_readout, name="abtest-readout"),
    path("<int:pk>/promote/", views.abtest_promote, name="abtest-promote"),
]
