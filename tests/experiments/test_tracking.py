"""Tracking services: experiments, runs, params, metric series, the end state, artifacts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.core.models import AuditEntry
from apps.experiments import services
from apps.experiments.models import Experiment, RunMetric


@pytest.fixture
def experiment(project: object, owner: object) -> Experiment:
    return services.experiment_create(project=project, name="churn", actor=owner)


def test_experiment_names_are_unique_per_project_as_compared(project: object, owner: object, experiment) -> None:
    with pytest.raises(ValidationError, match="exists"):
        services.experiment_create(project=project, name="CHURN ", actor=owner)
    assert services.experiment_get_or_create(project=project, name="Churn", actor=owner) == experiment
    assert AuditEntry.objects.filter(action="experiment.created").count() == 1


def test_a_client_logs_params_metrics_and_ends_its_run(experiment: Experiment, owner: object) -> None:
    run = services.run_create(experiment=experiment, actor=owner, name="fit", params={"lr": 0.1}, tags={"team": "a"})
    assert run.status == "running" and run.started_at is not None
    services.run_log_params(run=run, actor=owner, params={"lr": 0.1, "depth": 3}, tags={"team": "b"})
    stored = services.run_log_metrics(
        run=run,
        actor=owner,
        metrics=[
            {"name": "loss", "value": 0.9, "step": 0},
            {"name": "loss", "value": 0.5, "step": 2},
            {"name": "loss", "value": 0.7, "step": 1},
            {"name": "auc", "value": 0.8},
        ],
    )
    assert stored == 4
    run.refresh_from_db()
    assert run.params == {"lr": 0.1, "depth": 3}
    assert run.tags == {"team": "b"}
    assert run.metrics == {"loss": 0.5, "auc": 0.8}, "the summary holds the value at the highest step"
    assert list(RunMetric.objects.filter(run=run, name="loss").values_list("step", flat=True)) == [0, 1, 2]
    services.run_set_terminated(run=run, actor=owner, status="succeeded")
    run.refresh_from_db()
    assert run.status == "succeeded" and run.ended_at is not None
    with pytest.raises(ValidationError, match="finished run cannot be changed"):
        services.run_log_metrics(run=run, actor=owner, metrics=[{"name": "loss", "value": 1.0}])
    assert AuditEntry.objects.filter(action="run.terminated", object_id=str(run.pk)).exists()


def test_a_logged_param_keeps_its_value(experiment: Experiment, owner: object) -> None:
    run = services.run_create(experiment=experiment, actor=owner, params={"lr": 0.1})
    with pytest.raises(ValidationError, match="cannot change once logged: lr"):
        services.run_log_params(run=run, actor=owner, params={"lr": 0.2})


@pytest.mark.parametrize(
    ("points", "field"),
    [
        ([], "metrics"),
        ([{"name": "", "value": 1}], "metrics[0].name"),
        ([{"name": "a", "value": float("nan")}], "metrics[0].value"),
        ([{"name": "a", "value": "high"}], "metrics[0].value"),
        ([{"name": "a", "value": 1, "step": -1}], "metrics[0].step"),
        ([{"name": "a", "value": 1, "timestamp": timezone.now().replace(tzinfo=None)}], "metrics[0].timestamp"),
        ([{"name": "a", "value": 1}] * 1001, "metrics"),
    ],
)
def test_bad_metric_points_are_refused_naming_the_point(experiment, owner, points, field) -> None:
    run = services.run_create(experiment=experiment, actor=owner)
    with pytest.raises(ValidationError) as caught:
        services.run_log_metrics(run=run, actor=owner, metrics=points)
    assert field in caught.value.message_dict
    assert not RunMetric.objects.filter(run=run).exists()


def test_timestamps_are_kept(experiment: Experiment, owner: object) -> None:
    run = services.run_create(experiment=experiment, actor=owner)
    when = timezone.now() - timedelta(hours=1)
    services.run_log_metrics(run=run, actor=owner, metrics=[{"name": "a", "value": 1, "timestamp": when}])
    assert RunMetric.objects.get(run=run).timestamp == when


def test_only_finished_states_end_a_run(experiment: Experiment, owner: object) -> None:
    run = services.run_create(experiment=experiment, actor=owner)
    with pytest.raises(ValidationError, match="Must be one of"):
        services.run_set_terminated(run=run, actor=owner, status="running")


def test_artifacts_are_content_addressed(experiment: Experiment, owner: object, tmp_path) -> None:
    run = services.run_create(experiment=experiment, actor=owner)
    path = tmp_path / "report.json"
    path.write_text("{}")
    artifact = services.run_artifact_store(run=run, path=path, name="reports/report.json", actor=owner)
    assert artifact.content_type == "application/json" and artifact.size_bytes == 2
    with pytest.raises(ValidationError, match="usable artifact name"):
        services.run_artifact_store(run=run, path=path, name="../etc/passwd", actor=owner)


def test_code_and_package_versions_are_recorded() -> None:
    assert len(services.code_version()) in (0, 40)
    versions = services.package_versions()
    assert {"python", "scikit-learn", "xgboost", "optuna"} <= set(versions)
