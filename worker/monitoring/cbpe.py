"""Label-free performance estimate for classifiers: confidence-based performance estimation (CBPE).

The method is NannyML's CBPE. If the model's class probabilities are calibrated, the probability it gives
to class c *is* the chance that the row's true class is c, so a window's confusion matrix can be
estimated without labels: for rows predicted as class j, the expected count whose true class is i is the
sum of their probabilities of class i. Accuracy and macro F1 follow from that expected matrix.

Assumptions (the console states them next to the estimate):

1. After calibration, the probabilities are calibrated on the monitored window too: the relation between
   inputs and labels (P(y | x)) is the same as in the reference window. Covariate shift (P(x) changes) is
   fine, concept drift is not: under concept drift the estimate is wrong and only labels can tell.
2. The reference window has labels and is large enough to fit the calibration (at least a few hundred
   rows per class).
3. The estimate is an expectation: on a small window the realised value scatters around it.

Calibration is isotonic regression per class, one-vs-rest (multi-class rows are renormalised to sum to 1).
It is fitted on the reference window and used only when it lowers the expected calibration error (ECE)
measured out of fold (5 folds, interleaved by row position): a model that is already calibrated keeps its
own probabilities, since an isotonic fit would only add noise.

ECE here: per class one-vs-rest, rows sorted by probability and cut into 10 bins of equal count, the
count-weighted mean of |mean label - mean probability| per bin; averaged over the classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression

CALIBRATION_FOLDS = 5
ECE_BINS = 10


@dataclass(frozen=True)
class Calibrator:
    """A monotone piecewise-linear map per class (isotonic regression knots); plain arrays, storable."""

    knots_x: tuple[np.ndarray, ...]
    knots_y: tuple[np.ndarray, ...]

    def apply(self, proba: np.ndarray) -> np.ndarray:
        calibrated = np.column_stack(
            [np.interp(proba[:, c], x, y) for c, (x, y) in enumerate(zip(self.knots_x, self.knots_y, strict=True))]
        )
        if calibrated.shape[1] == 1:
            return calibrated
        totals = calibrated.sum(axis=1, keepdims=True)
        # A row every class calibrates to 0 keeps its raw probabilities rather than dividing by zero.
        return np.where(totals > 0, calibrated / np.where(totals > 0, totals, 1), proba)


@dataclass(frozen=True)
class CBPEModel:
    classes: tuple[object, ...]
    calibrator: Calibrator | None
    ece_raw: float
    ece_calibrated: float
    n_reference: int

    @property
    def calibrated(self) -> bool:
        return self.calibrator is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (class labels must be strings or numbers)."""
        calibrator = self.calibrator
        return {
            "classes": list(self.classes),
            "knots_x": None if calibrator is None else [knots.tolist() for knots in calibrator.knots_x],
            "knots_y": None if calibrator is None else [knots.tolist() for knots in calibrator.knots_y],
            "ece_raw": self.ece_raw,
            "ece_calibrated": self.ece_calibrated,
            "n_reference": self.n_reference,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CBPEModel:
        calibrator = None
        if data["knots_x"] is not None:
            calibrator = Calibrator(
                knots_x=tuple(np.array(knots, dtype=float) for knots in data["knots_x"]),
                knots_y=tuple(np.array(knots, dtype=float) for knots in data["knots_y"]),
            )
        return cls(
            classes=tuple(data["classes"]),
            calibrator=calibrator,
            ece_raw=float(data["ece_raw"]),
            ece_calibrated=float(data["ece_calibrated"]),
            n_reference=int(data["n_reference"]),
        )


@dataclass(frozen=True)
class CBPEEstimate:
    n_rows: int
    accuracy: float | None
    f1_macro: float | None
    expected_confusion: np.ndarray | None  # rows: true class, columns: predicted class, in `classes` order
    calibrated: bool


def _one_vs_rest_columns(proba: np.ndarray) -> np.ndarray:
    """Binary models give one column (the positive class); calibration works on that one."""
    return proba[:, 1:2] if proba.shape[1] == 2 else proba


def _fit_calibrator(proba: np.ndarray, onehot: np.ndarray) -> Calibrator:
    """Isotonic fit per column; rows with equal scores are pooled first (as scikit-learn does), so the
    knots have strictly increasing x, and only the ends of each flat run are kept."""
    knots_x, knots_y = [], []
    for c in range(proba.shape[1]):
        x, inverse, counts = np.unique(proba[:, c], return_inverse=True, return_counts=True)
        mean_label = np.bincount(inverse, weights=onehot[:, c].astype(float)) / counts
        y = np.clip(isotonic_regression(mean_label, weights=counts.astype(float), increasing=True).x, 0.0, 1.0)
        keep = np.ones(x.size, dtype=bool)
        keep[1:-1] = (y[1:-1] != y[:-2]) | (y[1:-1] != y[2:])
        knots_x.append(x[keep])
        knots_y.append(y[keep])
    return Calibrator(knots_x=tuple(knots_x), knots_y=tuple(knots_y))


def expected_calibration_error(proba: np.ndarray, onehot: np.ndarray) -> float:
    errors = []
    for c in range(proba.shape[1]):
        order = np.argsort(proba[:, c], kind="stable")
        for bin_rows in np.array_split(order, min(ECE_BINS, order.size)):
            gap = abs(onehot[bin_rows, c].mean() - proba[bin_rows, c].mean())
            errors.append(gap * bin_rows.size / order.size)
    return float(np.sum(errors) / proba.shape[1])


def _onehot(labels: np.ndarray, classes: Sequence[object], field: str) -> np.ndarray:
    onehot = np.column_stack([labels == c for c in classes])
    if not onehot.any(axis=1).all():
        raise ValueError(f"{field} holds a label that is not in classes")
    return onehot


def cbpe_fit(*, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[object]) -> CBPEModel:
    """Fit the calibration on a labelled reference window; `proba` columns are in `classes` order."""
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape[1] != len(classes) or len(classes) < 2:
        raise ValueError("proba must have one column per class, and there must be at least two classes")
    if proba.shape[0] != y_true.size:
        raise ValueError("y_true and proba must have the same number of rows")
    if y_true.size < CALIBRATION_FOLDS * ECE_BINS:
        raise ValueError(f"the reference window needs at least {CALIBRATION_FOLDS * ECE_BINS} labelled rows")
    scores = _one_vs_rest_columns(proba)
    onehot = _one_vs_rest_columns(_onehot(y_true, classes, "y_true"))
    out_of_fold = np.empty_like(scores)
    fold = np.arange(y_true.size) % CALIBRATION_FOLDS
    for k in range(CALIBRATION_FOLDS):
        held_out = fold == k
        calibrator = _fit_calibrator(scores[~held_out], onehot[~held_out])
        out_of_fold[held_out] = calibrator.apply(scores[held_out])
    ece_raw = expected_calibration_error(scores, onehot)
    ece_calibrated = expected_calibration_error(out_of_fold, onehot)
    return CBPEModel(
        classes=tuple(classes),
        calibrator=_fit_calibrator(scores, onehot) if ece_calibrated < ece_raw else None,
        ece_raw=ece_raw,
        ece_calibrated=ece_calibrated,
        n_reference=int(y_true.size),
    )


def cbpe_estimate(*, model: CBPEModel, proba: np.ndarray, y_pred: np.ndarray) -> CBPEEstimate:
    """Expected confusion matrix, accuracy and macro F1 of a window without labels."""
    proba, y_pred = np.asarray(proba, dtype=float), np.asarray(y_pred)
    n = int(y_pred.size)
    if proba.shape != (n, len(model.classes)):
        raise ValueError("proba must have one row per prediction and one column per class")
    if n == 0:
        return CBPEEstimate(0, None, None, None, model.calibrated)
    if model.calibrator is not None:
        scores = model.calibrator.apply(_one_vs_rest_columns(proba))
        proba = np.column_stack([1 - scores[:, 0], scores[:, 0]]) if proba.shape[1] == 2 else scores
    predicted = _onehot(y_pred, model.classes, "y_pred").astype(float)
    confusion = proba.T @ predicted  # [true i, predicted j] = sum over rows predicted j of P(class i)
    tp = np.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # 2TP + FP + FN
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return CBPEEstimate(
        n_rows=n,
        accuracy=float(tp.sum() / n),
        f1_macro=float(f1.mean()),
        expected_confusion=confusion,
        calibrated=model.calibrated,
    )
