"""The experiments API: every permission as owner, editor, viewer and outsider, and every bad input."""

from __future__ import annotations

import pytest
from django.utils import timezone

from apps.core.api_pagination import Pagination
from apps.experiments import services
from apps.experiments.models import Experiment, PipelineRun, Run, RunMetric
from tests.conftest import client_for
from tests.experiments.conftest import IRIS_CONFIG

ROLES = ["owner", "member", "viewer", "outsider"]


@pytest.fixture
def users(owner, member, viewer, outsider) -> dict[str, object]:
    return {"owner": owner, "member": member, "viewer": viewer, "outsider": outsider}


@pytest.fixture
def tracked_run(project, owner) -> Run:
    experiment = services.experiment_create(project=project, name="api", actor=owner)
    return services.run_create(experiment=experiment, actor=owner, name="external", params={"lr": 0.1})


def test_anonymous_calls_get_401(api, tracked_run) -> None:
    for url in ("/api/v1/experiments/", "/api/v1/runs/", "/api/v1/pipeline-runs/", "/api/v1/studies/"):
        assert api.get(url).status_code == 401


@pytest.mark.parametrize("role", ROLES)
def test_reading_runs_and_experiments(role, users, tracked_run) -> None:
    client = client_for(users[role])
    listed = client.get("/api/v1/runs/").json()
    detail = client.get(f"/api/v1/runs/{tracked_run.pk}/")
    experiment = client.get(f"/api/v1/experiments/{tracked_run.experiment_id}/")
    if role == "outsider":
        assert listed["count"] == 0 and detail.status_code == 404 and experiment.status_code == 404
    else:
        assert listed["count"] == 1 and detail.status_code == 200 and experiment.json()["run_count"] == 1
        assert detail.json()["params"] == {"lr": 0.1} and "log" in detail.json()


@pytest.mark.parametrize(("role", "expected"), [("owner", 200), ("member", 200), ("viewer", 403), ("outsider", 404)])
def test_logging_needs_the_editor_role(role, expected, users, tracked_run) -> None:
    client = client_for(users[role])
    base = f"/api/v1/runs/{tracked_run.pk}"
    metrics = {"metrics": [{"name": "loss", "value": 0.5, "step": 1}, {"name": "loss", "value": 0.4, "step": 2}]}
    assert client.post(f"{base}/log-metrics/", metrics, format="json").status_code == expected
    assert client.post(f"{base}/log-params/", {"params": {"depth": 3}}, format="json").status_code == expected
    assert client.post(f"{base}/set-terminated/", {"status": "succeeded"}, format="json").status_code == expected
    tracked_run.refresh_from_db()
    if expected == 200:
        assert tracked_run.metrics == {"loss": 0.4} and tracked_run.params == {"lr": 0.1, "depth": 3}
        assert tracked_run.status == "succeeded"
    else:
        assert not RunMetric.objects.exists() and tracked_run.status == "running"


@pytest.mark.parametrize(("role", "expected"), [("owner", 201), ("member", 201), ("viewer", 403), ("outsider", 400)])
def test_creating_runs_mlflow_style(role, expected, users, project) -> None:
    client = client_for(users[role])
    response = client.post(
        "/api/v1/runs/",
        {"project": project.slug, "experiment_name": "outside", "name": "notebook", "params": {"a": 1}},
        format="json",
    )
    assert response.status_code == expected, response.content
    if expected == 201:
        run_id = response.json()["id"]
        assert response.json()["status"] == "running" and response.json()["experiment_name"] == "outside"
        points = [{"name": "acc", "value": i / 10, "step": i} for i in range(5)]
        assert client.post(f"/api/v1/runs/{run_id}/log-metrics/", {"metrics": points}, format="json").status_code == 200
        series = client.get(f"/api/v1/runs/{run_id}/metrics/?name=acc").json()
        assert [p["step"] for p in series["results"]] == [0, 1, 2, 3, 4]


MAX_PAGE_SIZE = Pagination.max_page_size


def test_a_long_metric_series_is_paged(owner, tracked_run) -> None:
    RunMetric.objects.bulk_create(
        RunMetric(run=tracked_run, name="loss", step=step, value=1 / (step + 1), timestamp=timezone.now())
        for step in range(MAX_PAGE_SIZE + 20)
    )
    client = client_for(owner)
    first = client.get(f"/api/v1/runs/{tracked_run.pk}/metrics/", {"name": "loss", "page_size": 100_000}).json()
    assert first["count"] == MAX_PAGE_SIZE + 20 and len(first["results"]) == MAX_PAGE_SIZE
    rest = client.get(first["next"]).json()
    assert [p["step"] for p in first["results"] + rest["results"]] == list(range(MAX_PAGE_SIZE + 20))


def test_bad_logging_input_is_a_400_naming_the_field(project, owner, tracked_run) -> None:
    client = client_for(owner)
    base = f"/api/v1/runs/{tracked_run.pk}"
    response = client.post(f"{base}/log-metrics/", {"metrics": [{"name": "a", "value": "x"}]}, format="json")
    assert response.status_code == 400 and "metrics" in response.json()
    response = client.post(f"{base}/log-params/", {"params": {"lr": 0.2}}, format="json")
    assert response.status_code == 400 and "cannot change" in response.json()["params"][0]
    response = client.post(f"{base}/set-terminated/", {"status": "running"}, format="json")
    assert response.status_code == 400 and "status" in response.json(), response.json()
    tracked_run.refresh_from_db()
    assert tracked_run.status == "running" and tracked_run.ended_at is None
    response = client.post("/api/v1/runs/", {"name": "x"}, format="json")
    assert response.status_code == 400 and "experiment" in response.json()["non_field_errors"][0]


def test_names_too_long_once_case_folded_are_a_400_naming_the_field(project, owner) -> None:
    client = client_for(owner)
    response = client.post("/api/v1/experiments/", {"project": project.slug, "name": "ß" * 100}, format="json")
    assert response.status_code == 400 and "limit is 100" in response.json()["name"][0]
    response = client.post(
        "/api/v1/runs/", {"project": project.slug, "experiment_name": "ß" * 100, "name": "x"}, format="json"
    )
    assert response.status_code == 400 and "limit is 100" in response.json()["experiment_name"][0]
    assert not Experiment.objects.exists() and not Run.objects.exists()


@pytest.mark.parametrize(("role", "expected"), [("owner", 201), ("member", 201), ("viewer", 403), ("outsider", 400)])
def test_starting_a_pipeline(role, expected, users, project, iris, django_capture_on_commit_callbacks) -> None:
    client = client_for(users[role])
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/pipeline-runs/", {"project": project.slug, "config_yaml": IRIS_CONFIG}, format="json"
        )
    assert response.status_code == expected, response.content
    if expected == 201:
        body = client.get(f"/api/v1/pipeline-runs/{response.json()['id']}/").json()
        assert body["status"] == "succeeded"
        assert [s["name"] for s in body["stages"]] == [
            "ingest",
            "validate",
            "features",
            "train",
            "evaluate",
            "register",
            "deploy",
        ]
        assert body["stages"][3]["peak_rss_bytes"] > 0
    else:
        assert not PipelineRun.objects.exists()


def test_a_pipeline_config_as_json_with_overrides(project, owner, iris, django_capture_on_commit_callbacks) -> None:
    config = {
        "experiment_id": "json",
        "data_config": {"dataset": "iris"},
        "model_config": {"algorithm": "random_forest", "n_estimators": 5},
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(owner).post(
            "/api/v1/pipeline-runs/",
            {
                "project": project.slug,
                "config": config,
                "experiment_id": "other",
                "model_type": "knn",
                "stage": "train",
            },
            format="json",
        )
    assert response.status_code == 201, response.content
    pipeline_run = PipelineRun.objects.get()
    assert pipeline_run.status == "succeeded" and pipeline_run.experiment.name == "other"
    assert pipeline_run.run.algorithm == "knn" and pipeline_run.stages.get(name="evaluate").status == "skipped"


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ("data_config: {dataset: iris\n", "config", "not valid YAML"),
        (IRIS_CONFIG.replace("random_forest", "deep_forest"), "model_config.algorithm", "unknown algorithm"),
        (IRIS_CONFIG.replace("n_estimators", "n_trees"), "model_config.n_trees", "unknown parameter"),
        (IRIS_CONFIG.replace("split: 0.8", "split: 0.8, target: label"), "data_config.target", "is not in iris v1"),
        (IRIS_CONFIG.replace("deployment_config", "deploy_config"), "deploy_config", "unknown key"),
        (
            IRIS_CONFIG.replace("n_estimators: 10}", "search: {space: {max_depth: {type: int, low: 9, high: 3}}}}"),
            "model_config.search.space.max_depth",
            "cannot be sampled",
        ),
    ],
)
def test_bad_pipeline_configs_are_400s_naming_the_key(config, field, words, project, owner, iris) -> None:
    response = client_for(owner).post(
        "/api/v1/pipeline-runs/", {"project": project.slug, "config_yaml": config}, format="json"
    )
    assert response.status_code == 400
    assert words in response.json()[field][0]


def test_a_blocked_dataset_version_is_a_400(project, owner, dataset_version) -> None:
    dataset_version(project, "iris", rules={"columns": {"petal width (cm)": {"max": 1.0, "blocking": True}}})
    response = client_for(owner).post(
        "/api/v1/pipeline-runs/", {"project": project.slug, "config_yaml": IRIS_CONFIG}, format="json"
    )
    assert response.status_code == 400 and "failed blocking validation" in response.json()["data_config.dataset"][0]


def test_config_must_be_given_once(project, owner) -> None:
    response = client_for(owner).post("/api/v1/pipeline-runs/", {"project": project.slug}, format="json")
    assert response.status_code == 400 and "config_yaml" in str(response.json()), response.json()
    assert not PipelineRun.objects.exists()


@pytest.mark.parametrize(("role", "expected"), [("owner", 202), ("member", 202), ("viewer", 403), ("outsider", 404)])
def test_cancelling_a_pipeline(role, expected, users, project, owner, iris) -> None:
    pipeline_run = services.pipeline_run_create(project=project, actor=owner, config_text=IRIS_CONFIG)
    response = client_for(users[role]).post(f"/api/v1/pipeline-runs/{pipeline_run.pk}/cancel/")
    assert response.status_code == expected
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == ("cancelled" if expected == 202 else "queued")
    if expected == 202:
        again = client_for(users[role]).post(f"/api/v1/pipeline-runs/{pipeline_run.pk}/cancel/")
        assert again.status_code == 400 and "already cancelled" in again.json()["status"][0]


@pytest.mark.parametrize("role", ROLES)
def test_reading_studies(role, users, project, owner, iris, run_pipeline) -> None:
    run_pipeline(project, owner, "data_config: {dataset: iris}\nmodel_config: {algorithm: knn, search: {n_trials: 2}}")
    client = client_for(users[role])
    studies = client.get("/api/v1/studies/").json()
    if role == "outsider":
        assert studies["count"] == 0
        return
    study = studies["results"][0]
    assert study["status"] == "succeeded" and study["trial_count"] == 2 and study["metric"] == "accuracy"
    trials = client.get(f"/api/v1/runs/?study={study['id']}").json()
    assert trials["count"] == 2
    assert client.get(f"/api/v1/runs/?parent={study['parent_run']}").json()["count"] == 2
    assert client.get("/api/v1/runs/?top_level=1").json()["count"] == 1


def test_the_openapi_schema_describes_the_experiments_api(api, owner) -> None:
    api.force_authenticate(owner)
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    for path in (
        "/api/v1/runs/{id}/log-metrics/",
        "/api/v1/runs/{id}/log-params/",
        "/api/v1/runs/{id}/set-terminated/",
        "/api/v1/pipeline-runs/{id}/cancel/",
        "/api/v1/studies/",
        "/api/v1/experiments/",
    ):
        assert path in paths
