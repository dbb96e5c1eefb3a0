"""Holdout metrics, plots as plain lists, and metric thresholds (quality gates)."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from serving.signature import json_scalar
from worker.training.errors import ConfigError

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2")
METRICS_BY_TASK = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS}
# Lower is better for these; used to pick the HPO direction and to word threshold failures.
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
MAX_ROC_POINTS = 200
MAX_RESIDUAL_POINTS = 500

_OPERATORS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    ">=": (operator.ge, "<"),
    ">": (operator.gt, "<="),
    "<=": (operator.le, ">"),
    "<": (operator.lt, ">="),
}
_THRESHOLD = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


def _number(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def _even_indices(n: int, limit: int) -> np.ndarray:
    """At most `limit` indices spread evenly over range(n), always keeping the first and last."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def _roc_curves(y_true: np.ndarray, proba: np.ndarray, classes: Sequence) -> list[dict]:
    curves = []
    # Binary: one curve for the positive (second) class; multiclass: one-vs-rest per class.
    positions = [1] if len(classes) == 2 else range(len(classes))
    for position in positions:
        positive = y_true == classes[position]
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positive, proba[:, position])
        keep = _even_indices(len(fpr), MAX_ROC_POINTS)
        curves.append(
            {
                "label": json_scalar(classes[position]),
                "fpr": [float(v) for v in fpr[keep]],
                "tpr": [float(v) for v in tpr[keep]],
                "auc": _number(skm.auc(fpr, tpr)),
            }
        )
    return curves


def classification_metrics(
    y_true: Any, y_pred: Any, proba: np.ndarray | None, classes: Sequence
) -> tuple[dict[str, float | None], dict]:
    """Metrics and plots for class labels; binary scores treat the second class (sorted) as positive."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    classes = list(classes)
    binary = len(classes) == 2
    average: dict[str, Any] = {"average": "binary", "pos_label": classes[1]} if binary else {"average": "macro"}
    result: dict[str, float | None] = {
        "accuracy": _number(skm.accuracy_score(y_true, y_pred)),
        "precision": _number(skm.precision_score(y_true, y_pred, labels=classes, zero_division=0, **average)),
        "recall": _number(skm.recall_score(y_true, y_pred, labels=classes, zero_division=0, **average)),
        "f1": _number(skm.f1_score(y_true, y_pred, labels=classes, zero_division=0, **average)),
        "roc_auc": None,
        "log_loss": None,
    }
    known = np.isin(y_true, np.asarray(classes, dtype=object))
    plots: dict[str, Any] = {
        "confusion_matrix": {
            "labels": [json_scalar(c) for c in classes],
            "matrix": skm.confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        }
    }
    # Probability scores need every true label to be a known class and both outcomes present.
    if proba is not None and known.all() and len(np.unique(y_true)) > 1:
        result["log_loss"] = _number(skm.log_loss(y_true, proba, labels=classes))
        try:
            if binary:
                result["roc_auc"] = _number(skm.roc_auc_score(y_true == classes[1], proba[:, 1]))
            else:
                result["roc_auc"] = _number(
                    skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes, average="macro")
                )
        except ValueError:
            result["roc_auc"] = None  # some class is absent from the holdout set
        plots["roc"] = _roc_curves(y_true, proba, classes)
    return result, plots


def regression_metrics(y_true: Any, y_pred: Any) -> tuple[dict[str, float | None], dict]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    residual = y_true - y_pred
    result = {
        "rmse": _number(np.sqrt(np.mean(residual**2))),
        "mae": _number(np.mean(np.abs(residual))),
        "r2": _number(skm.r2_score(y_true, y_pred)) if len(y_true) > 1 else None,
    }
    keep = _even_indices(len(y_true), MAX_RESIDUAL_POINTS)
    plots = {
        "residuals": {
            "predicted": [float(v) for v in y_pred[keep]],
            "actual": [float(v) for v in y_true[keep]],
            "residual": [float(v) for v in residual[keep]],
        }
    }
    return result, plots


def evaluate(
    task: str, y_true: Any, y_pred: Any, proba: np.ndarray | None = None, classes: Sequence | None = None
) -> tuple[dict[str, float | None], dict]:
    """(metrics, plots) for a holdout set; metrics that cannot be computed are None."""
    if task == "classification":
        return classification_metrics(y_true, y_pred, proba, classes or [])
    return regression_metrics(y_true, y_pred)


def summarize_folds(fold_metrics: list[Mapping[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Per metric: mean and std over folds (None when no fold could compute it)."""
    summary: dict[str, dict[str, float | None]] = {}
    for name in fold_metrics[0] if fold_metrics else []:
        values = [m[name] for m in fold_metrics if m.get(name) is not None]
        summary[name] = {
            "mean": _number(np.mean(values)) if values else None,
            "std": _number(np.std(values)) if values else None,
            "folds": [m.get(name) for m in fold_metrics],
        }
    return summary


def parse_threshold(name: str, spec: Any, *, task: str | None = None) -> tuple[str, float]:
    """('>=', 0.9) from '>= 0.9'; ConfigError for an unknown metric or a malformed condition."""
    known = METRICS_BY_TASK[task] if task else CLASSIFICATION_METRICS + REGRESSION_METRICS
    if name not in known:
        kind = f"{task} metric" if task else "metric"
        raise ConfigError(f"thresholds.{name}", f"unknown {kind}; expected one of {', '.join(known)}")
    match = _THRESHOLD.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ConfigError(f"thresholds.{name}", f"expected a condition like '>= 0.9' (>=, >, <=, <), got {spec!r}")
    return match.group(1), float(match.group(2))


def check_thresholds(metrics: Mapping[str, Any], thresholds: Mapping[str, Any]) -> tuple[bool, list[str]]:
    """(passed, failures) where each failure explains itself, e.g. 'accuracy 0.87 < 0.9'."""
    failures = []
    for name, spec in thresholds.items():
        op, limit = parse_threshold(name, spec)
        value = metrics.get(name)
        if value is None:
            failures.append(f"{name} was not computed for this model")
            continue
        compare, negation = _OPERATORS[op]
        if not compare(float(value), limit):
            failures.append(f"{name} {float(value):.4g} {negation} {limit:g}")
    return not failures, failures
