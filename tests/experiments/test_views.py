"""The experiments pages: who sees what, forms, live partials, downloads and pinned query counts."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from apps.experiments import services
from apps.experiments.models import PipelineRun, Study
from tests.experiments.conftest import IRIS_CONFIG

ROLES = ["owner", "member", "viewer", "outsider"]


def browser(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def users(owner, member, viewer, outsider) -> dict[str, object]:
    return {"owner": owner, "member": member, "viewer": viewer, "outsider": outsider}


@pytest.fixture
def pipeline_run(project, owner, iris, run_pipeline) -> PipelineRun:
    return run_pipeline(project, owner, IRIS_CONFIG)


@pytest.mark.parametrize("role", ROLES)
def test_every_page_of_a_pipeline_run(role, users, pipeline_run) -> None:
    client = browser(users[role])
    run = pipeline_run.run
    artifact = run.artifacts.get()
    pages = [
        reverse("experiments:experiment-detail", args=[pipeline_run.experiment_id]),
        reverse("experiments:run-detail", args=[run.pk]),
        reverse("experiments:run-log", args=[run.pk]),
        reverse("experiments:pipeline-detail", args=[pipeline_run.pk]),
        reverse("experiments:pipeline-live", args=[pipeline_run.pk]),
        reverse("experiments:artifact-download", args=[run.pk, artifact.pk]),
    ]
    for url in pages:
        response = client.get(url)
        assert response.status_code == (404 if role == "outsider" else 200), url
    listing = client.get(reverse("experiments:experiment-list")).content.decode()
    assert ("exp_001" in listing) == (role != "outsider")


def test_the_run_page_shows_params_metrics_plots_artifacts_and_log(viewer, pipeline_run) -> None:
    page = browser(viewer).get(reverse("experiments:run-detail", args=[pipeline_run.run_id])).content.decode()
    for text in (
        "n_estimators",
        "accuracy",
        "Confusion matrix",
        "model.zip",
        "[train] holdout",
        "Passes its thresholds",
    ):
        assert text in page
    assert 'src="/static/vendor/plotly/plotly.min.js"' in page or "plotly.min" in page
    assert "cdn" not in page.lower()


def test_the_pipeline_page_draws_dag_timeline_and_resources(viewer, pipeline_run) -> None:
    page = browser(viewer).get(reverse("experiments:pipeline-detail", args=[pipeline_run.pk])).content.decode()
    for element in ('id="figure-dag"', 'id="figure-timeline"', 'id="figure-resources"', "not available yet"):
        assert element in page
    assert "hx-trigger" not in page, "a finished run is not polled"
    assert 'data-testid="cancel-button"' not in page


def test_a_running_pipeline_is_polled_and_cancellable_by_editors(project, owner, viewer, member, iris) -> None:
    pipeline_run = services.pipeline_run_create(project=project, actor=owner, config_text=IRIS_CONFIG)
    url = reverse("experiments:pipeline-detail", args=[pipeline_run.pk])
    page = browser(viewer).get(url).content.decode()
    assert 'hx-trigger="every 2s"' in page and "cancel-button" not in page
    assert "cancel-button" in browser(member).get(url).content.decode()
    cancel = reverse("experiments:pipeline-cancel", args=[pipeline_run.pk])
    assert browser(viewer).post(cancel).status_code == 403
    assert browser(member).post(cancel).status_code == 302
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == "cancelled"


@pytest.mark.parametrize(("role", "expected"), [("member", 302), ("viewer", 400), ("outsider", 400)])
def test_starting_a_pipeline_from_the_form(role, expected, users, project, iris, django_capture_on_commit_callbacks):
    client = browser(users[role])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("experiments:pipeline-list"), {"project": project.slug, "config_yaml": IRIS_CONFIG, "stage": ""}
        )
    assert response.status_code == expected
    assert PipelineRun.objects.exists() == (expected == 302)


def test_a_bad_config_in_the_form_shows_the_key(project, member, iris) -> None:
    response = browser(member).post(
        reverse("experiments:pipeline-list"),
        {"project": project.slug, "config_yaml": IRIS_CONFIG.replace("n_estimators", "trees"), "stage": ""},
    )
    assert response.status_code == 400
    assert "model_config.trees: model_config.trees: unknown parameter" not in response.content.decode()
    assert "model_config.trees" in response.content.decode()


def test_creating_an_experiment(project, member, viewer) -> None:
    url = reverse("experiments:experiment-list")
    assert browser(viewer).post(url, {"project": project.slug, "name": "x"}).status_code == 400
    response = browser(member).post(url, {"project": project.slug, "name": "churn", "description": ""})
    assert response.status_code == 302
    assert browser(member).post(url, {"project": project.slug, "name": "Churn"}).status_code == 400


def test_comparison_highlights_the_best_value(project, owner, viewer, iris, run_pipeline) -> None:
    first = run_pipeline(project, owner, IRIS_CONFIG)
    second = run_pipeline(project, owner, IRIS_CONFIG.replace("n_estimators: 10", "n_estimators: 3"))
    url = reverse("experiments:run-compare") + f"?runs={first.run_id}&runs={second.run_id}&metric=accuracy"
    page = browser(viewer).get(url).content.decode()
    assert page.count('data-best="1"') >= 4
    assert 'id="figure-parallel"' in page


def test_study_pages(project, owner, viewer, outsider, iris, run_pipeline) -> None:
    config = "data_config: {dataset: iris}\nmodel_config: {algorithm: knn, search: {n_trials: 3, sampler: random}}"
    run_pipeline(project, owner, config)
    study = Study.objects.get()
    assert (
        "figure-history" in browser(viewer).get(reverse("experiments:study-detail", args=[study.pk])).content.decode()
    )
    assert study.storage_name in browser(viewer).get(reverse("experiments:study-list")).content.decode()
    assert browser(outsider).get(reverse("experiments:study-detail", args=[study.pk])).status_code == 404


def test_the_project_page_lists_pipeline_runs(project, viewer, pipeline_run) -> None:
    page = browser(viewer).get(project.get_absolute_url()).content.decode()
    assert 'data-testid="project-experiments"' in page and f"#{pipeline_run.pk}" in page


def test_list_pages_use_a_fixed_number_of_queries(
    project, owner, viewer, iris, run_pipeline, django_assert_max_num_queries
):
    for _ in range(3):
        run_pipeline(project, owner, IRIS_CONFIG)
    client = browser(viewer)
    experiment = PipelineRun.objects.first().experiment_id
    for url in (
        reverse("experiments:pipeline-list"),
        reverse("experiments:experiment-list"),
        reverse("experiments:experiment-detail", args=[experiment]),
    ):
        with django_assert_max_num_queries(12):
            assert client.get(url).status_code == 200
