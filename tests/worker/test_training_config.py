"""Config validation: features, algorithms and their params, thresholds, TrainConfig and task inference."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from worker.training.algorithms import ALGORITHMS, get_algorithm
from worker.training.config import TrainConfig, infer_task
from worker.training.errors import ConfigError
from worker.training.evaluate import check_thresholds, evaluate
from worker.training.features import build_preprocessor

FRAME = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [1, 2, 3], "c": ["a", "b", "a"]})


def _field(exc: pytest.ExceptionInfo) -> str:
    return exc.value.field


@pytest.mark.parametrize(
    ("features", "field"),
    [
        ({"colour": True}, "features.colour"),
        ({"impute": {"numeric": "mode"}}, "features.impute.numeric"),
        ({"impute": {"categorical": "mean"}}, "features.impute.categorical"),
        ({"impute": {"text": "constant"}}, "features.impute.text"),
        ({"scale": "zscore"}, "features.scale"),
        ({"one_hot": "yes"}, "features.one_hot"),
        ({"log": "x"}, "features.log"),
        ({"log": ["c"]}, "features.log"),
        ({"log": ["nope"]}, "features.log"),
        ({"columns": ["x", "nope"]}, "features.columns"),
        ({"columns": []}, "features.columns"),
    ],
)
def test_feature_config_errors_name_the_key(features: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_preprocessor(features, FRAME)
    assert _field(caught) == field


def test_preprocessor_follows_the_config() -> None:
    pre = build_preprocessor({"scale": "minmax", "one_hot": ["y"], "log": ["x"]}, FRAME).fit(FRAME)
    names = list(pre.get_feature_names_out())
    assert names == [
        "log__x",
        "categorical__c_a",
        "categorical__c_b",
        "categorical_numeric__y_1",
        "categorical_numeric__y_2",
        "categorical_numeric__y_3",
    ]
    out = pre.transform(pd.DataFrame({"x": [1.0], "y": [7], "c": ["zzz"]}))  # unseen categories: zeros
    assert out[0, 1:].sum() == 0 and out[0, 0] == 0.0
    ordinal = build_preprocessor({"one_hot": False, "scale": "none"}, FRAME).fit(FRAME)
    assert ordinal.transform(pd.DataFrame({"x": [1.0], "y": [1], "c": ["zzz"]})).tolist() == [[1.0, 1.0, -1.0]]


def test_every_algorithm_is_described_and_its_search_space_uses_its_params() -> None:
    assert set(ALGORITHMS) == {
        "random_forest", "gradient_boosting", "logistic_regression", "linear", "svm", "knn", "xgboost",
        "pytorch_mlp", "custom",
    }  # fmt: skip
    study = optuna.create_study()
    for name, algorithm in ALGORITHMS.items():
        trial = study.ask()
        params = algorithm.suggest(trial, f"{name}.")
        assert set(params) <= algorithm.allowed_params or algorithm.open_params, name
        algorithm.resolve_params(params)
        assert all(key.startswith(f"{name}.") for key in trial.params)
        assert algorithm.tasks and set(algorithm.tasks) <= {"classification", "regression"}


def test_unknown_param_names_it() -> None:
    with pytest.raises(ConfigError) as caught:
        ALGORITHMS["random_forest"].resolve_params({"n_trees": 10})
    assert _field(caught) == "params.n_trees" and "n_estimators" in caught.value.message


def test_custom_needs_allow_custom() -> None:
    with pytest.raises(ConfigError) as caught:
        get_algorithm("custom")
    assert _field(caught) == "algorithm"
    assert get_algorithm("custom", allow_custom=True).flavor == "custom"


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ([], "config"),
        ({"target": "y"}, "algorithm"),
        ({"algorithm": "deep_forest", "target": "y"}, "algorithm"),
        ({"algorithm": "knn"}, "target"),
        ({"algorithm": "knn", "target": "y", "colour": 1}, "colour"),
        ({"algorithm": "knn", "target": "y", "task": "ranking"}, "task"),
        ({"algorithm": "linear", "target": "y", "task": "classification"}, "task"),
        ({"algorithm": "knn", "target": "y", "params": {"k": 3}}, "params.k"),
        ({"algorithm": "knn", "target": "y", "seed": "1"}, "seed"),
        ({"algorithm": "knn", "target": "y", "seed": True}, "seed"),
        ({"algorithm": "knn", "target": "y", "cv_folds": 1}, "cv_folds"),
        ({"algorithm": "knn", "target": "y", "cv_folds": 99}, "cv_folds"),
        ({"algorithm": "knn", "target": "y", "epochs": 0}, "epochs"),
        ({"algorithm": "knn", "target": "y", "lr": -1}, "lr"),
        ({"algorithm": "knn", "target": "y", "hidden": [0]}, "hidden"),
        ({"algorithm": "pytorch_mlp", "target": "y", "params": {"hidden": "big"}}, "params.hidden"),
        ({"algorithm": "knn", "target": "y", "thresholds": {"accuracy": "about 0.9"}}, "thresholds.accuracy"),
        ({"algorithm": "knn", "target": "y", "thresholds": {"speed": ">= 1"}}, "thresholds.speed"),
        ({"algorithm": "knn", "target": "y", "task": "regression", "thresholds": {"f1": "> 0"}}, "thresholds.f1"),
        ({"algorithm": "knn", "target": "y", "features": {"scale": "log"}}, "features.scale"),
    ],
)
def test_train_config_errors(config: object, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(config)
    assert _field(caught) == field


def test_train_config_round_trips_and_fills_defaults() -> None:
    config = TrainConfig.from_dict({"algorithm": "xgboost", "target": "y", "thresholds": {"rmse": "<= 50"}})
    assert (config.task, config.seed, config.cv_folds, config.epochs, config.hidden) == ("auto", 0, 0, 50, [64, 32])
    assert TrainConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b", "a"], "classification"),
        ([True, False, True], "classification"),
        (list(range(20)) * 2, "classification"),
        (list(range(21)) * 2, "regression"),
        ([0.5, 1.5, 2.0], "regression"),
        ([1.0, 2.0, 1.0], "regression"),  # floats are measurements, even when whole
    ],
)
def test_auto_task_rule(values: list, task: str) -> None:
    assert infer_task(pd.Series(values)) == task


def test_thresholds_explain_failures_and_reject_bad_specs() -> None:
    metrics = {"accuracy": 0.87, "rmse": 55.0, "roc_auc": None}
    assert check_thresholds(metrics, {"accuracy": ">= 0.8", "rmse": "<= 60"}) == (True, [])
    passed, failures = check_thresholds(metrics, {"accuracy": ">= 0.9", "rmse": "<= 50", "roc_auc": "> 0.5"})
    assert not passed
    assert failures == ["accuracy 0.87 < 0.9", "rmse 55 > 50", "roc_auc was not computed for this model"]
    with pytest.raises(ConfigError) as caught:
        check_thresholds(metrics, {"accuracy": "=> 0.9"})
    assert _field(caught) == "thresholds.accuracy"
    with pytest.raises(ConfigError) as caught:
        check_thresholds(metrics, {"precision@5": ">= 0.9"})
    assert _field(caught) == "thresholds.precision@5"


def test_binary_metrics_and_downsampled_curves() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(["no", "yes"], 2000)
    score = np.clip((y == "yes") * 0.3 + rng.random(2000) * 0.7, 0, 1)
    proba = np.column_stack([1 - score, score])
    predicted = np.where(score > 0.5, "yes", "no")
    metrics, plots = evaluate("classification", y, predicted, proba, ["no", "yes"])
    assert 0.5 < metrics["roc_auc"] <= 1 and metrics["log_loss"] > 0
    (curve,) = plots["roc"]
    assert curve["label"] == "yes" and 2 < len(curve["fpr"]) <= 200
    assert curve["fpr"][0] == 0.0 and curve["fpr"][-1] == 1.0
    regression, plots = evaluate("regression", rng.normal(size=2000), rng.normal(size=2000))
    assert len(plots["residuals"]["residual"]) == 500 and regression["rmse"] > 0
