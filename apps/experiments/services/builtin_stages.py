"""The bodies of the built-in stages: ingest, validate, features, train (one model; the HPO search is in
studies) and evaluate.

Each is a `StageHandler` (apps/experiments/stages.py) and returns the stage's outputs (JSON). Data never
travels between stages: each loads what it needs from the artifact store (verified by hash) and the
rows of the stages before (the split, the inferred task).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from django.db import transaction

from apps.datasets.choices import DatasetVersionStatus
from apps.datasets.models import DatasetSplit
from apps.datasets.services import dataset_split_indices, dataset_version_load_frame, dataset_version_split
from apps.experiments import pipeline_config
from apps.experiments.choices import PipelineStageName, RunArtifactKind
from apps.experiments.models import PipelineRun, Run
from apps.experiments.services.runtime import StageRuntime
from apps.experiments.services.tracking import package_versions, run_artifact_store, run_metrics_record
from apps.experiments.stages import StageContext, StageFailed
from serving.loader import load_predictor
from worker.datasets.schema import BOOLEAN, CATEGORICAL, INTEGER, schema_columns
from worker.training.algorithms import ALGORITHMS
from worker.training.config import TrainConfig, infer_task
from worker.training.evaluate import check_thresholds, evaluate
from worker.training.features import build_preprocessor, check_feature_config, select_columns
from worker.training.trainer import TrainResult, train

# Stratify by the target only when it looks like class labels (as the datasets app decides).
MAX_STRATIFY_CLASSES = 100
# Holdout metrics recomputed from the stored bundle may differ from training's in the last bits only.
METRIC_TOLERANCE = 1e-9


def _outputs(pipeline_run: PipelineRun, name: str) -> dict[str, Any]:
    return pipeline_run.stages.filter(name=name).values_list("outputs", flat=True).first() or {}


def _split(pipeline_run: PipelineRun) -> DatasetSplit:
    split_id = _outputs(pipeline_run, PipelineStageName.INGEST).get("split_id")
    split = DatasetSplit.objects.select_related("version__dataset__project").filter(pk=split_id).first()
    if split is None:
        raise StageFailed("the ingest stage recorded no train/test split; run the pipeline from the start")
    return split


def load_frames(pipeline_run: PipelineRun, columns: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and test rows of the pipeline's split."""
    split = _split(pipeline_run)
    frame = dataset_version_load_frame(split.version, columns=columns)
    train_rows, test_rows = dataset_split_indices(split=split)
    return frame.iloc[train_rows].reset_index(drop=True), frame.iloc[test_rows].reset_index(drop=True)


def ingest(context: StageContext) -> dict[str, Any]:
    """Resolve the dataset version and make (or find) the reproducible train/test split."""
    pipeline_run = context.pipeline_run
    version = pipeline_run.dataset_version
    data = pipeline_run.config["data"]
    target = pipeline_run.config["train"]["target"]
    if version.status != DatasetVersionStatus.READY:
        raise StageFailed(f"{version} is {version.status}; only a ready (profiled) version can be used")
    column = schema_columns(version.schema).get(target)
    if column is None:
        raise StageFailed(f"the target column {target!r} is not in {version}")
    distinct = version.profile.get("columns", {}).get(target, {}).get("distinct", 0)
    labels = column["type"] in (CATEGORICAL, BOOLEAN) or (
        column["type"] == INTEGER and distinct <= MAX_STRATIFY_CLASSES
    )
    stratify = target if data["stratify"] and labels else None
    test_size = round(1.0 - data["split"], 10)
    context.log(f"{version}: {version.row_count:,} rows, {version.column_count} columns, sha256 {version.sha256[:12]}…")
    split = dataset_version_split(
        version=version, test_size=test_size, seed=data["seed"], stratify=stratify, actor=pipeline_run.created_by
    )
    Run.objects.filter(pk=pipeline_run.run_id).update(dataset_split=split)
    context.log(
        f"split {split.train_count:,} train / {split.test_count:,} test rows (seed {split.seed}"
        + (f", stratified by {split.stratify}" if split.stratified else "")
        + ")"
    )
    return {
        "dataset": version.dataset.name,
        "version": version.number,
        "sha256": version.sha256,
        "rows": version.row_count,
        "columns": version.column_count,
        "split_id": split.pk,
        "train_rows": split.train_count,
        "test_rows": split.test_count,
        "stratified_by": split.stratify if split.stratified else "",
        "note": split.note,
    }


def validate(context: StageContext) -> dict[str, Any]:
    """Refuse data that may not or cannot train: blocking validation, missing columns, one class only."""
    pipeline_run = context.pipeline_run
    version = pipeline_run.dataset_version
    train_config = pipeline_run.config["train"]
    target = train_config["target"]
    if version.blocking_failed:
        failed = [c["message"] for c in version.validation.get("checks", []) if c.get("blocking")]
        raise StageFailed(f"{version} failed blocking validation: {'; '.join(failed) or 'see the dataset page'}")
    warnings = [c["message"] for c in version.validation.get("checks", []) if c.get("status") in ("warn", "fail")]
    for message in warnings:
        context.log(f"dataset check (not blocking): {message}")
    columns = schema_columns(version.schema)
    if target not in columns:
        raise StageFailed(f"the target column {target!r} is not in {version}; its columns: {', '.join(columns)}")
    for name in (train_config.get("features") or {}).get("columns") or []:
        if name not in columns:
            raise StageFailed(f"data_config.features.columns: {version} has no column {name!r}")
    train_df, _ = load_frames(pipeline_run, columns=[target])
    labelled = train_df[target].dropna()
    if labelled.empty:
        raise StageFailed(f"the target column {target!r} has no values in the training rows")
    task = train_config["task"] if train_config["task"] != "auto" else infer_task(labelled)
    outputs: dict[str, Any] = {
        "task": task,
        "task_inferred": train_config["task"] == "auto",
        "target": target,
        "target_missing": int(train_df[target].isna().sum()),
        "validation_status": version.validation.get("status", ""),
        "warnings": warnings,
    }
    if task == "classification":
        counts = labelled.astype(str).value_counts()
        if len(counts) < 2:
            raise StageFailed(f"classification needs at least two classes in {target!r}; found {len(counts)}")
        outputs["classes"] = {str(k): int(v) for k, v in counts.head(50).items()}
    algorithm = train_config["algorithm"]
    if task not in ALGORITHMS[algorithm].tasks:
        raise StageFailed(f"model_config.algorithm: {algorithm} does not support {task} (the task of {target!r})")
    search = pipeline_run.config.get("search")
    if search:
        for name in search["algorithms"]:
            if task not in ALGORITHMS[name].tasks:
                raise StageFailed(f"model_config.search.algorithms: {name} does not support {task}")
        try:
            outputs["search_metric"], outputs["search_direction"] = pipeline_config.search_metric(search, task)
        except pipeline_config.ConfigError as exc:
            raise StageFailed(f"{exc.field}: {exc.message}") from None
    context.log(f"task: {task}" + (" (inferred from the target)" if outputs["task_inferred"] else ""))
    return outputs


def features(context: StageContext) -> dict[str, Any]:
    """Check the declared feature engineering against the data by fitting it on the training rows.

    The fitted transforms are not kept here: training fits them again inside the model pipeline, so
    they are saved in the model bundle and travel with the model to serving.
    """
    pipeline_run = context.pipeline_run
    train_config = pipeline_run.config["train"]
    target = train_config["target"]
    train_df, _ = load_frames(pipeline_run)
    config = check_feature_config(train_config.get("features"))
    columns = select_columns(config, train_df, target)
    preprocessor = build_preprocessor(config, train_df[columns])
    matrix = preprocessor.fit_transform(train_df[columns])
    kinds = {name: [str(c) for c in cols] for name, _, cols in preprocessor.transformers_}
    context.log(f"{len(columns)} feature columns → {matrix.shape[1]} model inputs ({', '.join(kinds)})")
    return {
        "columns": columns,
        "transformers": kinds,
        "inputs": int(matrix.shape[1]),
        "scale": config["scale"],
        "impute": config["impute"],
        "one_hot": config["one_hot"],
        "log": config["log"],
        "fitted_on_rows": len(train_df),
    }


def train_config_for(pipeline_run: PipelineRun, **overrides: Any) -> TrainConfig:
    task = _outputs(pipeline_run, PipelineStageName.VALIDATE).get("task") or pipeline_run.config["train"]["task"]
    return TrainConfig.from_dict({**pipeline_run.config["train"], "task": task, **overrides})


def train_into_run(
    *,
    run: Run,
    config: TrainConfig,
    train_df: pd.DataFrame,
    test_df: pd.DataFrame,
    runtime: StageRuntime,
    trial: Any = None,
) -> TrainResult:
    """Train with worker/training and record everything on the run: params, metrics, plots, the bundle."""
    with tempfile.TemporaryDirectory(prefix="train-") as scratch:
        result = train(
            config,
            train_df,
            test_df,
            on_metric=runtime.metric,
            on_log=runtime.log,
            should_stop=runtime.should_stop,
            output_dir=Path(scratch),
            trial=trial,
        )
        runtime.flush()
        artifact = run_artifact_store(
            run=run, path=Path(result.bundle_path), name="model.zip", kind=RunArtifactKind.MODEL, actor=None
        )
    if artifact.sha256 != result.bundle_sha256:
        raise StageFailed(f"the stored bundle hashes to {artifact.sha256[:12]}…, not {result.bundle_sha256[:12]}…")
    holdout = [(name, 0, value) for name, value in result.metrics.items() if value is not None]
    timings = [(name, 0, value) for name, value in result.timings.items()]
    run_metrics_record(run_id=run.pk, points=holdout + timings)
    Run.objects.filter(pk=run.pk).update(
        params=result.params,
        task=result.task,
        algorithm=result.algorithm,
        plots=result.plots,
        cv_metrics=result.cv_metrics,
        passes_thresholds=result.passes_thresholds,
        threshold_failures=result.threshold_failures,
        package_versions={**package_versions(), **result.package_versions},
    )
    return result


def train_model(context: StageContext) -> dict[str, Any]:
    """Train the configured model on the training rows (the train stage without a `search`)."""
    pipeline_run = context.pipeline_run
    config = train_config_for(pipeline_run)
    train_df, test_df = load_frames(pipeline_run)
    result = train_into_run(
        run=pipeline_run.run, config=config, train_df=train_df, test_df=test_df, runtime=context.runtime
    )
    with transaction.atomic():
        PipelineRun.objects.filter(pk=pipeline_run.pk).update(candidate_run=pipeline_run.run)
    return {
        "run_id": pipeline_run.run_id,
        "algorithm": result.algorithm,
        "task": result.task,
        "model_sha256": result.bundle_sha256,
        "metrics": result.metrics,
        "timings": result.timings,
    }


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=METRIC_TOLERANCE, abs_tol=METRIC_TOLERANCE)


def evaluate_stage(context: StageContext) -> dict[str, Any]:
    """Load the candidate's stored bundle (hash verified), score the holdout rows, apply the thresholds."""
    from apps.core.services import artifact_verified_path

    pipeline_run = PipelineRun.objects.select_related("candidate_run", "run", "project").get(
        pk=context.stage.pipeline_run_id
    )
    candidate = pipeline_run.candidate_run
    if candidate is None:
        raise StageFailed("the train stage produced no candidate model")
    artifact = candidate.artifacts.filter(kind=RunArtifactKind.MODEL).first()
    if artifact is None:
        raise StageFailed(f"{candidate} has no model artifact")
    path = artifact_verified_path(sha256=artifact.sha256, project=pipeline_run.project, obj=candidate)
    predictor = load_predictor(path, expected_sha256=artifact.sha256)
    _, test_df = load_frames(pipeline_run)
    target = pipeline_run.config["train"]["target"]
    labelled = test_df[test_df[target].notna()]
    frame = labelled.drop(columns=[target])
    task = candidate.task
    predictions = predictor.predict(frame)
    proba = predictor.predict_proba(frame) if task == "classification" else None
    y_true = labelled[target].to_numpy(dtype=np.float64) if task == "regression" else labelled[target].to_numpy()
    metrics, _ = evaluate(task, y_true, predictions, proba, predictor.classes)
    differing = [name for name, value in metrics.items() if not _close(value, candidate.metrics.get(name))]
    if differing:
        context.log(f"warning: the stored model scores differently from training on {', '.join(differing)}")
    thresholds = pipeline_run.config["train"].get("thresholds") or {}
    passed, failures = check_thresholds(metrics, thresholds)
    Run.objects.filter(pk=pipeline_run.run_id).update(passes_thresholds=passed, threshold_failures=failures)
    context.log(
        "holdout: "
        + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if v is not None)
        + (f"; thresholds {'passed' if passed else 'not met: ' + '; '.join(failures)}" if thresholds else "")
    )
    return {
        "candidate_run_id": candidate.pk,
        "model_sha256": artifact.sha256,
        "rows": len(labelled),
        "metrics": metrics,
        "passes_thresholds": passed,
        "threshold_failures": failures,
        "matches_training": not differing,
    }
