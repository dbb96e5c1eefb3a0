"""Pipeline runs through the stage tasks (run eagerly): stages, tracking, handlers, bad input, recovery."""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.core.artifacts import get_artifact_store
from apps.core.models import AuditEntry
from apps.experiments import services
from apps.experiments.models import PipelineRun, PipelineStage, Run, RunMetric
from apps.experiments.services import pipelines
from apps.experiments.stages import StageContext, StageSkipped, register_stage_handler
from serving.loader import load_predictor
from tests.experiments.conftest import IRIS_CONFIG
from worker.datasets.demo import demo_frame


def _statuses(pipeline_run: PipelineRun) -> dict[str, str]:
    return dict(pipeline_run.stages.values_list("name", "status"))


def test_the_seed_example_runs_every_stage_and_is_tracked(project, owner, iris, run_pipeline) -> None:
    pipeline_run = run_pipeline(project, owner, IRIS_CONFIG)
    assert pipeline_run.status == "succeeded", pipeline_run.error
    assert _statuses(pipeline_run) == {
        "ingest": "succeeded",
        "validate": "succeeded",
        "features": "succeeded",
        "train": "succeeded",
        "evaluate": "succeeded",
        "register": "skipped",
        "deploy": "skipped",
    }
    register = pipeline_run.stages.get(name="register")
    assert register.error == "not available yet: the registry app is not installed"
    for stage in pipeline_run.stages.filter(status="succeeded"):
        assert stage.duration_seconds > 0 and stage.cpu_seconds >= 0 and stage.peak_rss_bytes > 10 * 2**20
        assert stage.started_at <= stage.ended_at and stage.attempts == 1
        assert f"[{stage.name}] started on" in stage.log

    run = pipeline_run.run
    assert run.experiment.name == "exp_001"
    assert run.status == "succeeded" and run.ended_at is not None
    assert run.params["n_estimators"] == 10 and run.params["algorithm"] == "random_forest"
    assert run.task == "classification" and run.passes_thresholds is True
    assert set(run.metrics) >= {"accuracy", "f1", "roc_auc", "log_loss", "fit_seconds"}
    assert run.metrics["accuracy"] > 0.8
    assert run.dataset_version == iris and run.dataset_split.test_count == 30 and run.dataset_split.stratified
    assert {"python", "scikit-learn"} <= set(run.package_versions)
    assert run.plots["confusion_matrix"]["labels"] == ["setosa", "versicolor", "virginica"]
    assert "[train] holdout: accuracy=" in run.log
    assert pipeline_run.candidate_run == run

    model = run.artifacts.get(kind="model")
    assert model.name == "model.zip"
    predictor = load_predictor(get_artifact_store().verified_path(model.sha256), expected_sha256=model.sha256)
    frame = demo_frame("iris").drop(columns=["target"]).head(3)
    assert list(predictor.predict(frame)) == ["setosa"] * 3

    evaluate = pipeline_run.stages.get(name="evaluate").outputs
    assert evaluate["matches_training"] is True and evaluate["metrics"]["accuracy"] == run.metrics["accuracy"]
    actions = set(AuditEntry.objects.filter(object_id=str(pipeline_run.pk)).values_list("action", flat=True))
    assert {
        "pipeline_run.created",
        "pipeline_run.started",
        "pipeline_stage.succeeded",
        "pipeline_run.succeeded",
    } <= actions


def test_same_config_seed_and_version_give_the_same_metrics(project, owner, iris, run_pipeline) -> None:
    first = run_pipeline(project, owner, IRIS_CONFIG)
    second = run_pipeline(project, owner, IRIS_CONFIG)
    holdout = ("accuracy", "f1", "roc_auc", "log_loss", "precision", "recall")
    assert {k: first.run.metrics[k] for k in holdout} == {k: second.run.metrics[k] for k in holdout}
    assert first.run.dataset_split == second.run.dataset_split


def test_a_regression_with_cross_validation(project, owner, dataset_version, run_pipeline) -> None:
    dataset_version(project, "diabetes")
    config = """
data_config: {dataset: diabetes}
model_config: {algorithm: gradient_boosting, n_estimators: 10, cv_folds: 3, thresholds: {r2: ">= 0.99"}}
"""
    pipeline_run = run_pipeline(project, owner, config)
    assert pipeline_run.status == "succeeded", pipeline_run.error
    run = pipeline_run.run
    assert run.task == "regression"
    assert set(run.cv_metrics["rmse"]) == {"mean", "std", "folds"} and len(run.cv_metrics["rmse"]["folds"]) == 3
    assert len(run.plots["residuals"]["predicted"]) == run.dataset_split.test_count
    assert run.passes_thresholds is False and run.threshold_failures[0].startswith("r2 ")
    assert RunMetric.objects.filter(run=run, name="train_loss").count() == 10, "the per-stage loss curve"


def test_a_pytorch_model_logs_a_curve_per_epoch(project, owner, dataset_version, run_pipeline) -> None:
    dataset_version(project, "wine")
    config = "data_config: {dataset: wine}\nmodel_config: {algorithm: pytorch_mlp, epochs: 3, hidden: [8]}"
    pipeline_run = run_pipeline(project, owner, config)
    assert pipeline_run.status == "succeeded", pipeline_run.error
    assert RunMetric.objects.filter(run=pipeline_run.run, name="val_loss").count() == 3


def test_a_stage_selection_runs_the_data_stages_only(project, owner, iris, run_pipeline) -> None:
    pipeline_run = run_pipeline(project, owner, IRIS_CONFIG, stage="data_processing")
    assert pipeline_run.status == "succeeded"
    statuses = _statuses(pipeline_run)
    assert [statuses[s] for s in ("ingest", "validate", "features")] == ["succeeded"] * 3
    assert {statuses[s] for s in ("train", "evaluate", "register", "deploy")} == {"skipped"}
    assert pipeline_run.stages.get(name="train").error.startswith("not requested")
    assert not pipeline_run.run.artifacts.exists()


def test_registered_handlers_run_register_and_deploy(project, owner, iris, run_pipeline, stage_handlers) -> None:
    seen = {}

    def register(context: StageContext) -> dict:
        seen["register"] = context
        context.log("registered version 1")
        return {"model_version": 1, "sha256": context.model_artifact.sha256}

    def deploy(context: StageContext) -> dict:
        seen["deploy"] = context
        return {"deployment": context.config["strategy"], "version": context.outputs["register"]["model_version"]}

    stage_handlers("register", register)
    stage_handlers("deploy", deploy)
    pipeline_run = run_pipeline(project, owner, IRIS_CONFIG)
    assert pipeline_run.status == "succeeded"
    assert pipeline_run.stages.get(name="deploy").outputs == {"deployment": "blue_green", "version": 1}
    context = seen["register"]
    assert context.pipeline_run == pipeline_run and context.stage.name == "register"
    assert context.run == pipeline_run.run and context.candidate_run == pipeline_run.run
    assert context.outputs["evaluate"]["passes_thresholds"] is True and context.actor == owner
    assert seen["deploy"].config == {"strategy": "blue_green", "replicas": 3}
    assert "registered version 1" in pipeline_run.stages.get(name="register").log


def test_deploy_does_not_run_for_a_model_below_its_thresholds(project, owner, iris, run_pipeline, stage_handlers):
    stage_handlers("register", lambda context: {"model_version": 1})
    stage_handlers("deploy", lambda context: pytest.fail("must not deploy"))
    config = IRIS_CONFIG.replace("n_estimators: 10", "n_estimators: 10, thresholds: {accuracy: '>= 0.999'}")
    pipeline_run = run_pipeline(project, owner, config)
    assert pipeline_run.status == "succeeded"
    deploy = pipeline_run.stages.get(name="deploy")
    assert deploy.status == "skipped" and "did not pass its thresholds (accuracy" in deploy.error


def test_a_handler_may_skip_or_fail_its_stage(project, owner, iris, run_pipeline, stage_handlers) -> None:
    def skip(context: StageContext) -> dict:
        raise StageSkipped("no model name configured")

    stage_handlers("register", skip)
    pipeline_run = run_pipeline(project, owner, IRIS_CONFIG)
    assert pipeline_run.status == "succeeded"
    assert pipeline_run.stages.get(name="register").error == "no model name configured"
    assert pipeline_run.stages.get(name="deploy").status == "skipped"

    def fail(context: StageContext) -> dict:
        raise RuntimeError("registry is read-only")

    stage_handlers("register", fail)
    pipeline_run = run_pipeline(project, owner, IRIS_CONFIG)
    assert pipeline_run.status == "failed"
    assert pipeline_run.error == "register: RuntimeError: registry is read-only"
    assert pipeline_run.run.status == "failed"


def test_a_stage_over_its_time_limit_is_failed(project, owner, iris, run_pipeline, stage_handlers, settings) -> None:
    def slow(context: StageContext) -> dict:
        raise SoftTimeLimitExceeded()

    stage_handlers("register", slow)
    pipeline_run = run_pipeline(project, owner, IRIS_CONFIG)
    assert pipeline_run.status == "failed"
    register = pipeline_run.stages.get(name="register")
    limit = settings.EXPERIMENTS_STAGE_SOFT_TIME_LIMIT
    assert register.error == f"the register stage exceeded its time limit of {limit} s and was stopped"


def test_only_pipeline_stages_take_handlers() -> None:
    with pytest.raises(ValueError, match="'predict' is not a pipeline stage"):
        register_stage_handler("predict", lambda context: {})


def test_the_runner_imports_neither_the_stage_bodies_nor_the_studies() -> None:
    """The pipeline runner finds the built-in stages in the registry: no import cycle with the HPO studies."""
    tree = ast.parse(Path(services.pipelines.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"apps.experiments.services.builtin_stages", "apps.experiments.services.studies"}
    assert "apps.experiments.stages" in imported


# Bad input


def _create_error(project, owner, text: str) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        services.pipeline_run_create(project=project, actor=owner, config_text=text)
    assert not PipelineRun.objects.exists()
    return caught.value.message_dict


def test_unknown_algorithm_or_parameter(project, owner, iris) -> None:
    errors = _create_error(project, owner, IRIS_CONFIG.replace("random_forest", "forest"))
    assert "unknown algorithm 'forest'" in errors["model_config.algorithm"][0]
    errors = _create_error(project, owner, IRIS_CONFIG.replace("n_estimators", "trees"))
    assert "unknown parameter for random_forest" in errors["model_config.trees"][0]


def test_a_target_missing_from_the_dataset(project, owner, iris) -> None:
    errors = _create_error(project, owner, IRIS_CONFIG.replace("split: 0.8", "split: 0.8, target: species"))
    assert errors["data_config.target"][0].startswith("The target column 'species' is not in iris v1; its columns:")


def test_a_dataset_version_that_failed_blocking_validation(project, owner, dataset_version) -> None:
    rules = {"columns": {"petal width (cm)": {"max": 1.0, "blocking": True}}}
    version = dataset_version(project, "iris", rules=rules)
    assert version.blocking_failed
    errors = _create_error(project, owner, IRIS_CONFIG)
    assert "failed blocking validation" in errors["data_config.dataset"][0]


def test_missing_dataset_version_and_invalid_yaml(project, owner, iris) -> None:
    errors = _create_error(project, owner, IRIS_CONFIG.replace("dataset: iris", "dataset: irises"))
    assert (
        "No dataset named 'irises'" in errors["data_config.dataset"][0] and "iris" in errors["data_config.dataset"][0]
    )
    errors = _create_error(project, owner, IRIS_CONFIG.replace("split: 0.8", "split: 0.8, version: 7"))
    assert errors["data_config.version"] == ["iris has no version 7."]
    errors = _create_error(project, owner, "data_config: {dataset: iris\n")
    assert "not valid YAML" in errors["config"][0]


def test_an_unsamplable_search_space(project, owner, iris) -> None:
    text = IRIS_CONFIG.replace("n_estimators: 10}", "search: {space: {n_estimators: {type: int, low: 10, high: 1}}}}")
    errors = _create_error(project, owner, text)
    assert "cannot be sampled" in errors["model_config.search.space.n_estimators"][0]


def test_an_algorithm_that_cannot_do_the_task_fails_the_validate_stage(project, owner, iris, run_pipeline) -> None:
    pipeline_run = run_pipeline(project, owner, IRIS_CONFIG.replace("random_forest, n_estimators: 10", "linear"))
    assert pipeline_run.status == "failed"
    validate = pipeline_run.stages.get(name="validate")
    assert validate.error == "model_config.algorithm: linear does not support classification (the task of 'target')"
    assert pipeline_run.error.startswith("validate: model_config.algorithm")
    assert _statuses(pipeline_run)["train"] == "skipped"
    assert pipeline_run.stages.get(name="train").error == "not run: the validate stage failed"


# Cancelling and recovering


def test_cancelling_a_queued_pipeline_ends_it_at_once(project, owner, iris) -> None:
    pipeline_run = services.pipeline_run_create(project=project, actor=owner, config_text=IRIS_CONFIG)
    services.pipeline_run_cancel(pipeline_run=pipeline_run, actor=owner)
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == "cancelled"
    assert set(_statuses(pipeline_run).values()) == {"cancelled"}
    assert pipeline_run.run.status == "cancelled"
    stage = pipeline_run.stages.get(name="ingest")
    pipelines.pipeline_stage_execute(stage_id=stage.pk, task_id=stage.task_id)
    stage.refresh_from_db()
    assert stage.status == "cancelled", "its queued task does nothing"
    with pytest.raises(ValidationError, match="already cancelled"):
        services.pipeline_run_cancel(pipeline_run=pipeline_run, actor=owner)


def test_a_cancelled_running_pipeline_stops_at_its_next_check(project, owner, iris) -> None:
    pipeline_run = services.pipeline_run_create(
        project=project, actor=owner, config_text=IRIS_CONFIG, executor=services.EXECUTOR_INLINE
    )
    ingest = pipeline_run.stages.get(name="ingest")
    pipelines.pipeline_stage_execute(stage_id=ingest.pk, task_id=ingest.task_id)
    validate = pipeline_run.stages.get(name="validate")
    PipelineStage.objects.filter(pk=validate.pk).update(status="running", heartbeat_at=timezone.now())
    services.pipeline_run_cancel(pipeline_run=pipeline_run, actor=owner)
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == "cancelling"
    # The stage's task sees the row (as a training loop's should_stop() would) and stops.
    PipelineStage.objects.filter(pk=validate.pk).update(status="queued")
    pipelines.pipeline_stage_execute(stage_id=validate.pk, task_id=validate.task_id)
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == "cancelled"
    assert _statuses(pipeline_run)["validate"] == "cancelled" and _statuses(pipeline_run)["train"] == "cancelled"


def _running_stage(project, owner, heartbeat_age: timedelta, attempts: int = 1) -> PipelineStage:
    pipeline_run = services.pipeline_run_create(
        project=project, actor=owner, config_text=IRIS_CONFIG, executor=services.EXECUTOR_INLINE
    )
    stage = pipeline_run.stages.get(name="ingest")
    PipelineRun.objects.filter(pk=pipeline_run.pk).update(status="running")
    PipelineStage.objects.filter(pk=stage.pk).update(
        status="running", attempts=attempts, heartbeat_at=timezone.now() - heartbeat_age, started_at=timezone.now()
    )
    stage.refresh_from_db()
    return stage


def test_a_redelivered_stage_takes_over_from_a_dead_attempt(project, owner, iris) -> None:
    stage = _running_stage(project, owner, heartbeat_age=timedelta(minutes=1))
    pipelines.pipeline_stage_execute(stage_id=stage.pk, task_id=stage.task_id)
    stage.refresh_from_db()
    assert stage.status == "succeeded" and stage.attempts == 2
    assert "retrying, attempt 2 of 2" in stage.log


def test_a_stage_whose_worker_died_twice_fails_with_the_reason(project, owner, iris) -> None:
    stage = _running_stage(project, owner, heartbeat_age=timedelta(minutes=1), attempts=2)
    pipelines.pipeline_stage_execute(stage_id=stage.pk, task_id=stage.task_id)
    stage.refresh_from_db()
    assert stage.status == "failed" and "stopped 2 times (killed, out of memory or restarted)" in stage.error
    assert stage.pipeline_run.status == "failed" and stage.pipeline_run.run.status == "failed"


def test_another_task_or_a_live_attempt_does_not_run_the_stage(project, owner, iris, monkeypatch) -> None:
    stage = _running_stage(project, owner, heartbeat_age=timedelta(seconds=0))
    pipelines.pipeline_stage_execute(stage_id=stage.pk, task_id="someone-else")
    monkeypatch.setattr(pipelines, "CLAIM_WAIT_SECONDS", 0.05)
    monkeypatch.setattr(pipelines, "CLAIM_POLL_SECONDS", 0.01)
    pipelines.pipeline_stage_execute(stage_id=stage.pk, task_id=stage.task_id)
    stage.refresh_from_db()
    assert stage.status == "running" and stage.attempts == 1


def test_the_reaper_fails_stages_without_heartbeat(project, owner, iris) -> None:
    fresh = _running_stage(project, owner, heartbeat_age=timedelta(seconds=1))
    stage = _running_stage(project, owner, heartbeat_age=timedelta(minutes=5))
    assert services.pipeline_runs_reap_stale() == 1
    stage.refresh_from_db()
    fresh.refresh_from_db()
    # 300 s plus however long this test took since creating the stage.
    assert stage.status == "failed" and re.search(r"stopped reporting 30\d s ago", stage.error), stage.error
    assert stage.pipeline_run.status == "failed"
    assert fresh.status == "running"


def test_the_reaper_ends_a_stale_cancelling_pipeline_as_cancelled(project, owner, iris) -> None:
    stage = _running_stage(project, owner, heartbeat_age=timedelta(minutes=5))
    PipelineRun.objects.filter(pk=stage.pipeline_run_id).update(status="cancelling")
    services.pipeline_runs_reap_stale()
    stage.pipeline_run.refresh_from_db()
    assert stage.pipeline_run.status == "cancelled"


def test_a_terminated_stage_task_is_recorded_as_cancelled(project, owner, iris) -> None:
    stage = _running_stage(project, owner, heartbeat_age=timedelta(seconds=1))
    PipelineRun.objects.filter(pk=stage.pipeline_run_id).update(status="cancelling")
    services.pipeline_stage_revoked(stage_id=stage.pk, task_id=stage.task_id)
    stage.refresh_from_db()
    assert stage.status == "cancelled" and stage.pipeline_run.status == "cancelled"
    assert Run.objects.get(pk=stage.pipeline_run.run_id).status == "cancelled"
