"""Hyperparameter search: trials as child runs, the best trial as candidate, model selection, failures."""

from __future__ import annotations

from datetime import timedelta

import optuna
import pytest
from django.utils import timezone

from apps.experiments import hpo, services
from apps.experiments.models import PipelineRun, Run, Study
from apps.experiments.services import studies

XGB_SEARCH = """
experiment_id: bc
data_config: {dataset: breast_cancer, split: 0.75}
model_config:
  algorithm: xgboost
  seed: 1
  search:
    n_trials: 4
    metric: roc_auc
    space:
      n_estimators: {type: int, low: 5, high: 12}
      max_depth: {type: int, low: 2, high: 4}
      learning_rate: {type: float, low: 0.05, high: 0.3, log: true}
"""


@pytest.fixture
def breast_cancer(project, dataset_version):
    return dataset_version(project, "breast_cancer")


def test_the_best_trial_becomes_the_pipelines_candidate(project, owner, breast_cancer, run_pipeline) -> None:
    pipeline_run = run_pipeline(project, owner, XGB_SEARCH)
    assert pipeline_run.status == "succeeded", pipeline_run.error
    study = Study.objects.get(pipeline_run=pipeline_run)
    trials = Run.objects.filter(study=study).order_by("trial_slot")
    assert study.status == "succeeded" and study.finished_slots == [0, 1, 2, 3]
    assert trials.count() == 4 and {t.parent_id for t in trials} == {pipeline_run.run_id}
    assert sorted(t.trial_number for t in trials) == [0, 1, 2, 3]
    completed = [t for t in trials if t.status == "succeeded"]
    best = max(completed, key=lambda t: t.metrics["roc_auc"])
    assert study.best_run == best and study.best_value == best.metrics["roc_auc"]
    assert pipeline_run.candidate_run == best
    parent = pipeline_run.run
    assert parent.metrics["roc_auc"] == best.metrics["roc_auc"] and parent.params["best_trial"] == best.trial_number
    assert parent.artifacts.get(kind="model").sha256 == best.artifacts.get(kind="model").sha256
    assert pipeline_run.stages.get(name="evaluate").outputs["candidate_run_id"] == best.pk
    train = pipeline_run.stages.get(name="train")
    assert train.outputs["best_run_id"] == best.pk and train.cpu_seconds > 0 and train.peak_rss_bytes > 0
    assert "trial slot 3:" in train.log
    assert set(study.importances.get("values", {})) <= {"n_estimators", "max_depth", "learning_rate"}
    # The Optuna study lives in our database and agrees with the runs.
    loaded = optuna.load_study(study_name=study.storage_name, storage=hpo.storage())
    assert len(loaded.trials) == 4 and loaded.best_value == study.best_value
    for trial in completed:
        sampled = loaded.trials[trial.trial_number].params
        assert set(sampled) == {"n_estimators", "max_depth", "learning_rate"}
        assert {name: trial.params[name] for name in sampled} == sampled, "the run trained with what Optuna sampled"


def test_a_search_over_several_algorithms_selects_a_model(project, owner, iris, run_pipeline) -> None:
    config = """
data_config: {dataset: iris}
model_config:
  algorithm: random_forest
  search:
    n_trials: 4
    sampler: random
    algorithms: [random_forest, logistic_regression]
    space:
      random_forest: {n_estimators: {type: int, low: 3, high: 8}}
      logistic_regression: {C: {type: float, low: 0.1, high: 10, log: true}}
"""
    pipeline_run = run_pipeline(project, owner, config)
    assert pipeline_run.status == "succeeded", pipeline_run.error
    trials = Run.objects.filter(study__pipeline_run=pipeline_run)
    assert {t.algorithm for t in trials} <= {"random_forest", "logistic_regression"}
    for trial in trials:
        assert trial.params["algorithm"] == trial.algorithm
    assert pipeline_run.run.algorithm == pipeline_run.candidate_run.algorithm


def test_one_trial_leaves_importances_explained(project, owner, iris, run_pipeline) -> None:
    config = "data_config: {dataset: iris}\nmodel_config: {algorithm: knn, search: {n_trials: 1}}"
    pipeline_run = run_pipeline(project, owner, config)
    assert pipeline_run.status == "succeeded"
    study = Study.objects.get(pipeline_run=pipeline_run)
    assert study.importances == {"note": "parameter importances need at least 2 completed trials; this study has 1"}


def test_a_space_whose_trials_all_fail_fails_the_train_stage(project, owner, iris, run_pipeline) -> None:
    config = """
data_config: {dataset: iris}
model_config: {algorithm: random_forest, search: {n_trials: 2, space: {max_features: [bogus]}}}
"""
    pipeline_run = run_pipeline(project, owner, config)
    assert pipeline_run.status == "failed"
    train = pipeline_run.stages.get(name="train")
    assert train.error.startswith("no trial completed (2 fail); first error: params:")
    assert Study.objects.get(pipeline_run=pipeline_run).status == "failed"
    assert set(Run.objects.filter(study__pipeline_run=pipeline_run).values_list("status", flat=True)) == {"failed"}


def test_trials_past_the_time_budget_are_not_run(project, owner, iris, run_pipeline) -> None:
    config = "data_config: {dataset: iris}\nmodel_config: {algorithm: knn, search: {n_trials: 3, timeout: 0.001}}"
    pipeline_run = run_pipeline(project, owner, config)
    assert pipeline_run.status == "failed"
    assert "no trial ran" in pipeline_run.stages.get(name="train").error
    assert "time budget of" in pipeline_run.stages.get(name="train").log


def test_a_trial_whose_worker_died_is_failed_and_counted(project, owner, iris, run_pipeline) -> None:
    config = "data_config: {dataset: iris}\nmodel_config: {algorithm: knn, search: {n_trials: 2}}"
    pipeline_run = run_pipeline(project, owner, config, stage="features")
    # Start the study by hand, as the train stage does, but let only one trial finish.
    PipelineRun.objects.filter(pk=pipeline_run.pk).update(status="running")
    train = pipeline_run.stages.get(name="train")
    train.status, train.started_at = "running", timezone.now()
    train.save()
    study = Study.objects.create(
        project=project,
        experiment=pipeline_run.experiment,
        pipeline_run=pipeline_run,
        parent_run=pipeline_run.run,
        storage_name=f"test-{pipeline_run.pk}",
        metric="accuracy",
        direction="maximize",
        sampler="random",
        pruner="none",
        n_trials=2,
        search=pipeline_run.config["search"],
        started_at=timezone.now(),
    )
    optuna.create_study(study_name=study.storage_name, storage=hpo.storage(), direction="maximize")
    studies.study_trial_execute(study_id=study.pk, slot=0, task_id="t0")
    dead = Run.objects.create(
        experiment=pipeline_run.experiment,
        study=study,
        trial_slot=1,
        status="running",
        task_id="t1",
        attempts=2,
        heartbeat_at=timezone.now() - timedelta(minutes=5),
        parent=pipeline_run.run,
    )
    assert services.pipeline_runs_reap_stale() == 1
    dead.refresh_from_db()
    study.refresh_from_db()
    assert dead.status == "failed" and "stopped reporting" in dead.error
    assert study.status == "succeeded" and study.finished_slots == [0, 1]
    pipeline_run.refresh_from_db()
    assert pipeline_run.candidate_run.trial_slot == 0
