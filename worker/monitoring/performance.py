"""Realised performance from labels: pure functions over numpy arrays of one window.

Rows whose label is missing (None or NaN) are left out; every result carries `n_labelled`, the number of
rows the metric was computed on, so the console can show it next to the metric. A metric that cannot be
computed (no labelled rows, a single class for ROC AUC, no variance for R²...) is None, never NaN.
Definitions follow scikit-learn's (tests check them to 1e-12):

- precision, recall and F1 are macro averages over the classes seen in labels or predictions; a class
  with nothing predicted has precision 0, a class never labelled has recall 0 (scikit-learn's
  `zero_division=0`);
- ROC AUC is one-vs-rest, macro-averaged over the probability columns, computed as the Mann-Whitney U
  statistic with tied scores counted half (the trapezoidal AUC);
- R² is 1 - SS_res / SS_tot; with a constant label it is 1.0 if the predictions are exact, else 0.0
  (scikit-learn's `force_finite`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class ClassificationPerformance:
    n_labelled: int
    accuracy: float | None
    precision_macro: float | None
    recall_macro: float | None
    f1_macro: float | None
    roc_auc: float | None
    roc_auc_reason: str | None = None


@dataclass(frozen=True)
class RegressionPerformance:
    n_labelled: int
    mae: float | None
    rmse: float | None
    r2: float | None


def label_missing(values: np.ndarray) -> np.ndarray:
    """True where a label is missing: None, or NaN in a float or object array."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is None or (isinstance(v, float) and v != v) for v in values], dtype=bool)
    return np.zeros(values.shape, dtype=bool)


def classification_performance(
    *,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None = None,
    classes: Sequence[object] | None = None,
) -> ClassificationPerformance:
    """Accuracy, macro precision/recall/F1 and (with `proba`, columns in `classes` order) ROC AUC."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred must have the same length")
    labelled = ~label_missing(y_true)
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    n = int(y_true.size)
    if n == 0:
        return ClassificationPerformance(0, None, None, None, None, None, "no labelled rows")
    labels = np.unique(np.concatenate([y_true, y_pred]))
    true_idx = np.searchsorted(labels, y_true)
    pred_idx = np.searchsorted(labels, y_pred)
    k = labels.size
    tp = np.bincount(true_idx[true_idx == pred_idx], minlength=k).astype(float)
    predicted = np.bincount(pred_idx, minlength=k).astype(float)
    actual = np.bincount(true_idx, minlength=k).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(k), where=actual > 0)
    f1_denominator = predicted + actual
    f1 = np.divide(2 * tp, f1_denominator, out=np.zeros(k), where=f1_denominator > 0)
    roc_auc, reason = (None, "no probabilities") if proba is None else _roc_auc_ovr(y_true, proba[labelled], classes)
    return ClassificationPerformance(
        n_labelled=n,
        accuracy=float(tp.sum() / n),
        precision_macro=float(precision.mean()),
        recall_macro=float(recall.mean()),
        f1_macro=float(f1.mean()),
        roc_auc=roc_auc,
        roc_auc_reason=reason,
    )


def _roc_auc_ovr(
    y_true: np.ndarray, proba: np.ndarray, classes: Sequence[object] | None
) -> tuple[float | None, str | None]:
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or classes is None or proba.shape[1] != len(classes):
        raise ValueError("proba must be a 2-D array with one column per entry of classes")
    columns = range(1, 2) if len(classes) == 2 else range(len(classes))
    aucs = []
    for column in columns:
        positive = y_true == classes[column]
        n_pos = int(positive.sum())
        n_neg = positive.size - n_pos
        if n_pos == 0 or n_neg == 0:
            return None, f"class {classes[column]!r} has no positive or no negative labels"
        ranks = rankdata(proba[:, column])
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)), None


def regression_performance(*, y_true: np.ndarray, y_pred: np.ndarray) -> RegressionPerformance:
    """MAE, RMSE and R² over the labelled rows."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred must have the same length")
    labelled = ~np.isnan(y_true)
    y_true, y_pred = y_true[labelled], y_pred[labelled]
    n = int(y_true.size)
    if n == 0:
        return RegressionPerformance(0, None, None, None)
    error = y_true - y_pred
    ss_res = float(np.sum(error**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    r2 = (1.0 if ss_res == 0 else 0.0) if ss_tot == 0 else 1 - ss_res / ss_tot
    return RegressionPerformance(
        n_labelled=n,
        mae=float(np.mean(np.abs(error))),
        rmse=float(np.sqrt(ss_res / n)),
        r2=r2,
    )
