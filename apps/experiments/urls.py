from __future__ import annotations

from django.urls import path

from apps.experiments import views

app_name = "experiments"

urlpatterns = [
    path("", views.experiment_list, name="experiment-list"),
    path("<int:pk>/", views.experiment_detail, name="experiment-detail"),
    path("runs/<int:pk>/", views.run_detail, name="run-detail"),
    path("runs/<int:pk>/log/", views.run_log, name="run-log"),
    path("runs/<int:pk>/artifacts/<int:artifact_id>/", views.artifact_download, name="artifact-download"),
    path("compare/", views.run_compare, name="run-compare"),
    path("pipelines/", views.pipeline_list, name="pipeline-list"),
    path("pipelines/<int:pk>/", views.pipeline_detail, name="pipeline-detail"),
    path("pipelines/<int:pk>/live/", views.pipeline_live, name="pipeline-live"),
    path("pipelines/<int:pk>/cancel/", views.pipeline_cancel, name="pipeline-cancel"),
    path("studies/", views.study_list, name="study-list"),
    path("studies/<int:pk>/", views.study_detail, name="study-detail"),
]
