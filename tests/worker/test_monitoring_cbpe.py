"""CBPE: the label-free estimate is close to the realised accuracy when the model is calibrated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worker.monitoring.cbpe import CBPEModel, cbpe_estimate, cbpe_fit
from worker.monitoring.performance import classification_performance


def calibrated_model(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities that are the true class chances: labels are drawn from them."""
    rng = np.random.default_rng(seed)
    proba = rng.dirichlet(np.full(n_classes, 0.7), size=n)
    y_true = (rng.random(n)[:, None] > np.cumsum(proba, axis=1)).sum(axis=1).clip(max=n_classes - 1)
    return proba, y_true, proba.argmax(axis=1)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_estimate_is_within_two_points_of_realised_accuracy(n_classes: int) -> None:
    classes = tuple(range(n_classes))
    ref_proba, ref_true, _ = calibrated_model(5000, n_classes, seed=1)
    proba, y_true, y_pred = calibrated_model(10_000, n_classes, seed=2)
    model = cbpe_fit(y_true=ref_true, proba=ref_proba, classes=classes)
    estimate = cbpe_estimate(model=model, proba=proba, y_pred=y_pred)
    realised = classification_performance(y_true=y_true, y_pred=y_pred)
    assert estimate.n_rows == 10_000
    assert abs(estimate.accuracy - realised.accuracy) < 0.02
    assert abs(estimate.f1_macro - realised.f1_macro) < 0.02
    assert estimate.expected_confusion.sum() == pytest.approx(10_000)


def test_calibration_is_fitted_when_it_lowers_the_calibration_error() -> None:
    classes = (0, 1)
    ref_proba, ref_true, _ = calibrated_model(5000, 2, seed=3)
    proba, y_true, y_pred = calibrated_model(10_000, 2, seed=4)

    def overconfident(p: np.ndarray) -> np.ndarray:
        positive = p[:, 1] ** 3 / (p[:, 1] ** 3 + p[:, 0] ** 3)
        return np.column_stack([1 - positive, positive])

    model = cbpe_fit(y_true=ref_true, proba=overconfident(ref_proba), classes=classes)
    assert model.calibrated and model.ece_calibrated < model.ece_raw
    stored = CBPEModel.from_dict(json.loads(json.dumps(model.to_dict())))
    restored = cbpe_estimate(model=stored, proba=overconfident(proba), y_pred=y_pred)
    estimate = cbpe_estimate(model=model, proba=overconfident(proba), y_pred=y_pred)
    assert np.array_equal(restored.expected_confusion, estimate.expected_confusion)
    realised = classification_performance(y_true=y_true, y_pred=y_pred).accuracy
    uncalibrated = cbpe_estimate(
        model=cbpe_fit(y_true=ref_true, proba=ref_proba, classes=classes), proba=overconfident(proba), y_pred=y_pred
    ).accuracy
    assert abs(estimate.accuracy - realised) < 0.02 < abs(uncalibrated - realised)


def test_calibration_is_skipped_when_it_does_not_help() -> None:
    """Two scores, each with exactly its share of positives in every fold: nothing to correct."""
    scores = np.tile([0.2, 0.8], 500)
    labels = np.zeros(1000, dtype=int)
    for start in range(0, 1000, 50):  # 10 rows per fold in each block of 50; exactly 20% / 80% positive
        block = np.arange(start, start + 50)
        low, high = block[scores[block] == 0.2], block[scores[block] == 0.8]
        labels[low[:5]] = 1
        labels[high[:20]] = 1
    proba = np.column_stack([1 - scores, scores])
    model = cbpe_fit(y_true=labels, proba=proba, classes=(0, 1))
    assert not model.calibrated and model.ece_raw == pytest.approx(0, abs=1e-12)
    estimate = cbpe_estimate(model=model, proba=proba, y_pred=(scores > 0.5).astype(int))
    assert estimate.accuracy == pytest.approx(0.8) and not estimate.calibrated


def test_bad_input_is_refused_and_an_empty_window_gives_none() -> None:
    proba, y_true, _ = calibrated_model(500, 3, seed=5)
    with pytest.raises(ValueError, match="one column per class"):
        cbpe_fit(y_true=y_true, proba=proba, classes=(0, 1))
    with pytest.raises(ValueError, match="y_true holds a label that is not in classes"):
        cbpe_fit(y_true=y_true + 5, proba=proba, classes=(0, 1, 2))
    with pytest.raises(ValueError, match="at least 50 labelled rows"):
        cbpe_fit(y_true=y_true[:10], proba=proba[:10], classes=(0, 1, 2))
    model = cbpe_fit(y_true=y_true, proba=proba, classes=(0, 1, 2))
    with pytest.raises(ValueError, match="y_pred holds a label that is not in classes"):
        cbpe_estimate(model=model, proba=proba, y_pred=np.full(500, 7))
    empty = cbpe_estimate(model=model, proba=np.empty((0, 3)), y_pred=np.array([], dtype=int))
    assert empty.n_rows == 0 and empty.accuracy is None and empty.f1_macro is None
