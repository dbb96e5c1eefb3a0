"""Realised performance from labels, checked against scikit-learn to 1e-12."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics

from worker.monitoring.performance import classification_performance, regression_performance

TOL = 1e-12


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classification_metrics_match_scikit_learn_on_the_labelled_rows(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    classes = np.array(["ant", "bee", "cat"][:n_classes])
    proba = rng.dirichlet(np.ones(n_classes), size=3000)
    proba = np.round(proba, 1) + 0.01  # tied scores
    proba /= proba.sum(axis=1, keepdims=True)
    y_pred = classes[proba.argmax(axis=1)]
    y_true = np.array([classes[rng.choice(n_classes, p=p / p.sum())] for p in proba + 0.05], dtype=object)
    y_true[rng.random(3000) < 0.3] = None  # labels not arrived yet
    labelled = np.array([label is not None for label in y_true])
    truth, pred = y_true[labelled].astype(str), y_pred[labelled]

    result = classification_performance(y_true=y_true, y_pred=y_pred, proba=proba, classes=tuple(classes))

    assert result.n_labelled == labelled.sum()
    assert result.accuracy == pytest.approx(metrics.accuracy_score(truth, pred), abs=TOL)
    for ours, theirs in [
        (result.precision_macro, metrics.precision_score),
        (result.recall_macro, metrics.recall_score),
        (result.f1_macro, metrics.f1_score),
    ]:
        assert ours == pytest.approx(theirs(truth, pred, average="macro", zero_division=0), abs=TOL)
    if n_classes == 2:
        expected_auc = metrics.roc_auc_score(truth == classes[1], proba[labelled, 1])
    else:
        expected_auc = metrics.roc_auc_score(truth, proba[labelled], multi_class="ovr", average="macro", labels=classes)
    assert result.roc_auc == pytest.approx(expected_auc, abs=TOL)


def test_a_class_never_predicted_counts_as_zero_precision_like_scikit_learn() -> None:
    y_true = np.array([0, 1, 2, 2, 1, 0])
    y_pred = np.array([0, 1, 1, 1, 1, 0])
    result = classification_performance(y_true=y_true, y_pred=y_pred)
    assert result.precision_macro == pytest.approx(
        metrics.precision_score(y_true, y_pred, average="macro", zero_division=0), abs=TOL
    )
    assert result.f1_macro == pytest.approx(metrics.f1_score(y_true, y_pred, average="macro", zero_division=0), abs=TOL)
    assert result.roc_auc is None and result.roc_auc_reason == "no probabilities"


def test_no_labels_and_single_class_give_none_not_nan() -> None:
    empty = classification_performance(y_true=np.array([None, None], dtype=object), y_pred=np.array(["a", "b"]))
    assert empty.n_labelled == 0 and empty.accuracy is None and empty.f1_macro is None
    one_class = classification_performance(
        y_true=np.array(["a", "a"]),
        y_pred=np.array(["a", "b"]),
        proba=np.array([[0.9, 0.1], [0.4, 0.6]]),
        classes=("a", "b"),
    )
    assert one_class.accuracy == 0.5 and one_class.roc_auc is None
    assert one_class.roc_auc_reason == "class 'b' has no positive or no negative labels"
    with pytest.raises(ValueError, match="same length"):
        classification_performance(y_true=np.array([1, 2]), y_pred=np.array([1]))


def test_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.normal(10, 3, size=2000)
    y_pred = y_true + rng.normal(0, 1, size=2000)
    y_true[::7] = np.nan
    labelled = ~np.isnan(y_true)
    result = regression_performance(y_true=y_true, y_pred=y_pred)
    assert result.n_labelled == labelled.sum()
    assert result.mae == pytest.approx(metrics.mean_absolute_error(y_true[labelled], y_pred[labelled]), abs=TOL)
    assert result.rmse == pytest.approx(metrics.root_mean_squared_error(y_true[labelled], y_pred[labelled]), abs=TOL)
    assert result.r2 == pytest.approx(metrics.r2_score(y_true[labelled], y_pred[labelled]), abs=TOL)


def test_regression_edge_cases() -> None:
    assert regression_performance(y_true=np.array([np.nan]), y_pred=np.array([1.0])).r2 is None
    constant = regression_performance(y_true=np.array([2.0, 2.0]), y_pred=np.array([2.0, 3.0]))
    assert constant.r2 == metrics.r2_score([2.0, 2.0], [2.0, 3.0]) == 0.0
