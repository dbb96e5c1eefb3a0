"""train(): one training run from a validated config and two frames to a verified bundle and its metrics.

The holdout metrics are computed by loading the written bundle with the serving loader and predicting
through it, so what is measured is exactly what gets deployed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.bundle import save_bundle
from serving.loader import Predictor, load_predictor
from serving.signature import InputError, infer_signature, json_scalar, validate_input
from worker.training.algorithms import TORCH_LOOP_PARAMS, Algorithm, get_algorithm
from worker.training.config import TrainConfig, infer_task
from worker.training.errors import ConfigError, TrainingCancelled
from worker.training.evaluate import check_thresholds, evaluate, parse_threshold, summarize_folds
from worker.training.features import build_preprocessor, select_columns
from worker.training.fitting import Hooks, fit_sklearn, fit_torch, fit_xgboost

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "TrainingCancelled", "effective_params", "train"]

BUNDLE_NAME = "model.zip"


@dataclass
class TrainResult:
    """Everything a run produced, as JSON-friendly values (lists, dicts, floats, strings)."""

    task: str
    algorithm: str
    flavor: str
    metrics: dict[str, float | None]
    cv_metrics: dict[str, dict[str, Any]]
    series: dict[str, list[tuple[int, float]]]
    plots: dict[str, Any]
    passes_thresholds: bool
    threshold_failures: list[str]
    bundle_path: str
    bundle_sha256: str
    signature: dict
    classes: list | None
    params: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    package_versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def effective_params(algorithm: Algorithm, config: TrainConfig) -> dict[str, Any]:
    """Algorithm defaults, then (for the PyTorch MLP) the top-level loop settings, then `config.params`."""
    params = dict(config.params)
    if algorithm.flavor == "pytorch":
        params = {**{name: getattr(config, name) for name in TORCH_LOOP_PARAMS}, **params}
    return algorithm.resolve_params(params)


def _targets(task: str, train: pd.Series, test: pd.Series) -> tuple[np.ndarray, np.ndarray, list | None]:
    if task == "regression":
        try:
            return train.to_numpy(dtype=np.float64), test.to_numpy(dtype=np.float64), None
        except (TypeError, ValueError) as exc:
            raise ConfigError("target", f"regression needs a numeric target: {exc}") from exc
    y_train, y_test = train.to_numpy(), test.to_numpy()
    try:
        classes = np.unique(y_train)
    except TypeError as exc:
        raise ConfigError("target", "the target mixes label types (e.g. numbers and strings)") from exc
    if len(classes) < 2:
        raise ConfigError("target", "classification needs at least two classes in the training data")
    return y_train, y_test, classes.tolist()


def _class_index(labels: np.ndarray, classes: list) -> np.ndarray:
    lookup = {label: index for index, label in enumerate(classes)}
    # Holdout labels unseen in training get -1: they only count as errors in the metrics.
    return np.asarray([lookup.get(json_scalar(v), -1) for v in labels], dtype=np.int64)


def _fit(
    algorithm: Algorithm,
    config: TrainConfig,
    task: str,
    params: dict[str, Any],
    classes: list | None,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_eval: pd.DataFrame | None,
    y_eval: np.ndarray | None,
    hooks: Hooks,
) -> dict[str, Any]:
    """Fit one model; returns the flavor's `save_bundle` keyword arguments."""
    preprocessor = build_preprocessor(config.features, x_train)
    n_classes = len(classes) if classes else 0
    if algorithm.flavor == "xgboost":
        if task == "classification":
            y_train = _class_index(y_train, classes)
            if y_eval is not None:
                keep = _class_index(y_eval, classes) >= 0
                x_eval, y_eval = x_eval[keep], _class_index(y_eval[keep], classes)
        return fit_xgboost(params, task, n_classes, preprocessor, x_train, y_train, x_eval, y_eval, config.seed, hooks)
    if algorithm.flavor == "pytorch":
        if task == "classification":
            y_train = _class_index(y_train, classes)
        return fit_torch(params, task, n_classes, preprocessor, x_train, y_train, config.seed, hooks)
    estimator = algorithm.build(task, params, config.seed)
    fitted = fit_sklearn(estimator, preprocessor, x_train, y_train, hooks)
    if algorithm.flavor == "custom":
        return {"custom_model": fitted["pipeline"]}
    return fitted


def _bundle_classes(fitted: dict[str, Any], classes: list | None) -> list | None:
    # An sklearn pipeline's probability columns follow its own classes_, which a CV fold may narrow.
    model = fitted.get("pipeline") or fitted.get("custom_model")
    own = getattr(model, "classes_", None)
    return [json_scalar(c) for c in own] if own is not None and classes is not None else classes


def _write_and_load(
    path: Path,
    algorithm: Algorithm,
    task: str,
    signature: dict,
    example: pd.DataFrame,
    classes: list | None,
    params: dict[str, Any],
    fitted: dict[str, Any],
) -> tuple[Predictor, str]:
    sha256 = save_bundle(
        path,
        flavor=algorithm.flavor,
        task=task,
        signature=signature,
        input_example=example,
        classes=_bundle_classes(fitted, classes),
        params={"algorithm": algorithm.name, **params},
        **fitted,
    )
    # The custom flavor is a pickle this very process just wrote, so trusting it here is safe.
    predictor = load_predictor(path, expected_sha256=sha256, trust_pickle=algorithm.flavor == "custom")
    return predictor, sha256


def _predict(predictor: Predictor, task: str, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    predictions = predictor.predict(frame)
    proba = None
    if task == "classification":
        try:
            proba = predictor.predict_proba(frame)
        except ValueError:
            proba = None  # a custom model without predict_proba: probability metrics stay empty
    return predictions, proba


def _cross_validate(
    algorithm: Algorithm,
    config: TrainConfig,
    task: str,
    params: dict[str, Any],
    classes: list | None,
    signature: dict,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    should_stop: Callable[[], bool] | None,
) -> dict[str, dict[str, Any]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    folds = config.cv_folds
    if task == "classification" and min(np.unique(y_train, return_counts=True)[1]) >= folds:
        splitter: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=config.seed)
    if len(x_train) < folds:
        raise ConfigError("cv_folds", f"{folds} folds need at least {folds} training rows")
    fold_metrics = []
    with tempfile.TemporaryDirectory(prefix="cv-") as scratch:
        for fold, (fit_rows, check_rows) in enumerate(splitter.split(x_train, y_train)):
            hooks = Hooks(should_stop=should_stop)
            x_fit, y_fit = x_train.iloc[fit_rows], y_train[fit_rows]
            fitted = _fit(algorithm, config, task, params, classes, x_fit, y_fit, None, None, hooks)
            bundle = Path(scratch) / f"fold-{fold}.zip"
            predictor, _ = _write_and_load(bundle, algorithm, task, signature, x_fit.head(5), classes, params, fitted)
            predictions, proba = _predict(predictor, task, x_train.iloc[check_rows])
            metrics, _ = evaluate(task, y_train[check_rows], predictions, proba, predictor.classes)
            fold_metrics.append(metrics)
    return summarize_folds(fold_metrics)


def train(
    config: TrainConfig,
    train_df: pd.DataFrame,
    test_df: pd.DataFrame,
    *,
    on_metric: Callable[[str, int, float], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    output_dir: Path,
    trial: Any = None,
) -> TrainResult:
    """Train, bundle, evaluate. Raises ConfigError for bad settings/data, TrainingCancelled, optuna.TrialPruned."""
    started = time.perf_counter()
    series: dict[str, list[tuple[int, float]]] = {}

    def record(name: str, step: int, value: float) -> None:
        series.setdefault(name, []).append((int(step), float(value)))
        if on_metric is not None:
            on_metric(name, step, value)

    hooks = Hooks(emit=record, log=on_log, should_stop=should_stop, trial=trial)
    hooks.check_stop()
    algorithm = get_algorithm(config.algorithm, allow_custom=config.allow_custom)
    target = config.target
    for name, frame in (("training", train_df), ("test", test_df)):
        if target not in frame.columns:
            raise ConfigError("target", f"column {target!r} is not in the {name} data")
    labelled_train, labelled_test = train_df[train_df[target].notna()], test_df[test_df[target].notna()]
    dropped = len(train_df) - len(labelled_train) + len(test_df) - len(labelled_test)
    if dropped:
        hooks.info(f"dropped {dropped} rows without a target value")
    if len(labelled_train) < 2 or len(labelled_test) < 1:
        raise ConfigError("target", "the training data needs at least 2 and the test data 1 labelled row")

    task = config.task if config.task != "auto" else infer_task(labelled_train[target])
    if task not in algorithm.tasks:
        raise ConfigError("algorithm", f"{algorithm.name} does not support {task}")
    for name, spec in config.thresholds.items():
        parse_threshold(name, spec, task=task)
    params = effective_params(algorithm, config)
    features = select_columns(config.features, labelled_train, target)
    absent = [name for name in features if name not in labelled_test.columns]
    if absent:
        raise ConfigError("features.columns", f"missing from the test data: {', '.join(absent)}")
    y_train, y_test, classes = _targets(task, labelled_train[target], labelled_test[target])
    hooks.info(
        f"{algorithm.label}: {task}, {len(features)} features, {len(y_train)} training / {len(y_test)} test rows"
    )

    both = pd.concat([labelled_train[features], labelled_test[features]], ignore_index=True)
    signature = infer_signature(both, target_kind=task, classes=classes)
    try:
        x_train = validate_input(labelled_train[features], signature)
        x_test = validate_input(labelled_test[features], signature)
    except InputError as exc:
        raise ConfigError(f"data.{exc.field}", exc.message) from exc

    fit_started = time.perf_counter()
    fitted = _fit(algorithm, config, task, params, classes, x_train, y_train, x_test, y_test, hooks)
    fit_seconds = time.perf_counter() - fit_started
    hooks.check_stop()

    output_dir = Path(output_dir)
    bundle_path = output_dir / BUNDLE_NAME
    predictor, sha256 = _write_and_load(
        bundle_path, algorithm, task, signature, x_train.head(5), classes, params, fitted
    )
    predict_started = time.perf_counter()
    predictions, proba = _predict(predictor, task, x_test)
    predict_seconds = time.perf_counter() - predict_started
    metrics, plots = evaluate(task, y_test, predictions, proba, predictor.classes)
    hooks.info("holdout: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if v is not None))

    cv_metrics: dict[str, dict[str, Any]] = {}
    cv_seconds = 0.0
    if config.cv_folds:
        cv_started = time.perf_counter()
        cv_metrics = _cross_validate(algorithm, config, task, params, classes, signature, x_train, y_train, should_stop)
        cv_seconds = time.perf_counter() - cv_started
        hooks.info(f"{config.cv_folds}-fold cross-validation done in {cv_seconds:.1f}s")

    passed, failures = check_thresholds(metrics, config.thresholds)
    for failure in failures:
        hooks.info(f"threshold not met: {failure}")
    return TrainResult(
        task=task,
        algorithm=algorithm.name,
        flavor=algorithm.flavor,
        metrics=metrics,
        cv_metrics=cv_metrics,
        series=series,
        plots=plots,
        passes_thresholds=passed,
        threshold_failures=failures,
        bundle_path=str(bundle_path),
        bundle_sha256=sha256,
        signature=signature,
        classes=predictor.classes,
        params=predictor.manifest["params"],
        timings={
            "fit_seconds": fit_seconds,
            "predict_seconds": predict_seconds,
            "cv_seconds": cv_seconds,
            "total_seconds": time.perf_counter() - started,
        },
        package_versions=predictor.manifest["framework_versions"],
    )
