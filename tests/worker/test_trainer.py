"""train(): every algorithm, bundles that serve what was measured, reproducibility, cancellation, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from serving.loader import load_predictor
from worker.training.errors import ConfigError, TrainingCancelled
from worker.training.trainer import TrainConfig, TrainResult, train

SMALL = {
    "random_forest": {"n_estimators": 30},
    "gradient_boosting": {"n_estimators": 30},
    "logistic_regression": {},
    "linear": {},
    "svm": {},
    "knn": {},
    "xgboost": {"n_estimators": 30, "max_depth": 3},
    "pytorch_mlp": {"lr": 0.01, "epochs": 40, "patience": 10, "hidden": [32]},
}


def _run(split: tuple, tmp_path: Path, **config: object) -> TrainResult:
    train_df, test_df = split
    return train(TrainConfig.from_dict(config), train_df, test_df, output_dir=tmp_path)


@pytest.mark.parametrize(
    "algorithm", ["random_forest", "gradient_boosting", "logistic_regression", "svm", "knn", "xgboost", "pytorch_mlp"]
)
def test_classifiers_learn_iris(algorithm: str, iris_split: tuple, tmp_path: Path) -> None:
    result = _run(iris_split, tmp_path, algorithm=algorithm, target="species", params=SMALL[algorithm])
    assert result.task == "classification"
    assert result.metrics["accuracy"] >= 0.85
    assert result.metrics["f1"] >= 0.85
    assert result.metrics["roc_auc"] >= 0.9
    assert result.classes == ["setosa", "versicolor", "virginica"]
    matrix = result.plots["confusion_matrix"]
    assert matrix["labels"] == result.classes and np.sum(matrix["matrix"]) == len(iris_split[1])
    assert len(result.plots["roc"]) == 3 and all(len(c["fpr"]) <= 200 for c in result.plots["roc"])
    json.dumps(result.to_dict())  # JSON-friendly all the way down
    # The bundle serves exactly what was measured, with labels as the original strings.
    predictor = load_predictor(result.bundle_path, expected_sha256=result.bundle_sha256)
    predictions = predictor.predict(iris_split[1])
    assert np.mean(predictions == iris_split[1]["species"].to_numpy()) == pytest.approx(result.metrics["accuracy"])
    assert set(predictions) <= set(result.classes)


@pytest.mark.parametrize(
    "algorithm", ["random_forest", "gradient_boosting", "linear", "svm", "knn", "xgboost", "pytorch_mlp"]
)
def test_regressors_learn_diabetes(algorithm: str, diabetes_split: tuple, tmp_path: Path) -> None:
    params = SMALL[algorithm] | ({"C": 100.0} if algorithm == "svm" else {})
    result = _run(diabetes_split, tmp_path, algorithm=algorithm, target="target", params=params)
    assert result.task == "regression"
    # The target's standard deviation is ~77: every model must beat predicting the mean by a margin.
    assert result.metrics["rmse"] < 68
    assert result.metrics["r2"] > 0.2
    assert len(result.plots["residuals"]["residual"]) == len(diabetes_split[1])
    predictor = load_predictor(result.bundle_path)
    rmse = np.sqrt(np.mean((predictor.predict(diabetes_split[1]) - diabetes_split[1]["target"].to_numpy()) ** 2))
    assert rmse == pytest.approx(result.metrics["rmse"])
    with pytest.raises(ValueError, match="only defined for classification"):
        predictor.predict_proba(diabetes_split[1])


def test_result_records_series_params_timings_and_versions(iris_split: tuple, tmp_path: Path) -> None:
    seen: list[tuple[str, int, float]] = []
    logs: list[str] = []
    config = TrainConfig.from_dict({"algorithm": "xgboost", "target": "species", "params": {"n_estimators": 12}})
    result = train(config, *iris_split, on_metric=lambda *m: seen.append(m), on_log=logs.append, output_dir=tmp_path)
    assert [step for step, _ in result.series["test_mlogloss"]] == list(range(12))
    assert ("train_mlogloss", 0, result.series["train_mlogloss"][0][1]) in seen
    assert result.series["test_mlogloss"][-1][1] < result.series["test_mlogloss"][0][1]  # it learned
    assert result.params["n_estimators"] == 12 and result.params["max_depth"] == 6  # defaults filled in
    assert result.timings["fit_seconds"] > 0 and result.timings["predict_seconds"] > 0
    assert result.package_versions["xgboost"]
    assert any(line.startswith("holdout: accuracy=") for line in logs)
    assert Path(result.bundle_path).parent == tmp_path


def test_pytorch_logs_epochs_and_stops_early(iris_split: tuple, tmp_path: Path) -> None:
    logs: list[str] = []
    config = TrainConfig.from_dict(
        {"algorithm": "pytorch_mlp", "target": "species", "epochs": 300, "patience": 2, "lr": 0.05, "hidden": [16]}
    )
    result = train(config, *iris_split, on_log=logs.append, output_dir=tmp_path)
    assert {"train_loss", "val_loss", "val_accuracy"} <= set(result.series)
    assert len(result.series["val_loss"]) < 300
    assert any("early stopping" in line for line in logs)


@pytest.mark.parametrize(
    ("algorithm", "params"),
    [
        ("random_forest", {"n_estimators": 20}),
        ("xgboost", {"n_estimators": 20, "subsample": 0.7, "colsample_bytree": 0.7}),
        ("pytorch_mlp", {"epochs": 15, "hidden": [16], "dropout": 0.2}),
    ],
)
def test_same_config_seed_and_data_give_the_same_metrics(
    algorithm: str, params: dict, iris_split: tuple, tmp_path: Path
) -> None:
    config = {"algorithm": algorithm, "target": "species", "params": params, "seed": 7}
    first = _run(iris_split, tmp_path / "a", **config)
    second = _run(iris_split, tmp_path / "b", **config)
    assert first.metrics == second.metrics
    assert first.series == second.series
    proba = [load_predictor(r.bundle_path).predict_proba(iris_split[1]) for r in (first, second)]
    np.testing.assert_array_equal(proba[0], proba[1])


def test_cross_validation_reports_mean_and_std(iris_split: tuple, tmp_path: Path) -> None:
    result = _run(iris_split, tmp_path, algorithm="knn", target="species", cv_folds=3)
    accuracy = result.cv_metrics["accuracy"]
    assert len(accuracy["folds"]) == 3 and 0.8 < accuracy["mean"] <= 1.0 and accuracy["std"] >= 0
    assert accuracy["mean"] == pytest.approx(np.mean(accuracy["folds"]))


def test_thresholds_pass_and_fail_with_reasons(iris_split: tuple, tmp_path: Path) -> None:
    passing = _run(iris_split, tmp_path / "a", algorithm="knn", target="species", thresholds={"accuracy": ">= 0.8"})
    assert passing.passes_thresholds and passing.threshold_failures == []
    failing = _run(
        iris_split,
        tmp_path / "b",
        algorithm="knn",
        target="species",
        thresholds={"accuracy": ">= 0.999", "log_loss": "< 0"},
    )
    assert not failing.passes_thresholds
    assert failing.threshold_failures[0] == f"accuracy {failing.metrics['accuracy']:.4g} < 0.999"
    assert failing.threshold_failures[1].startswith("log_loss ") and failing.threshold_failures[1].endswith(">= 0")


def test_task_auto_and_a_threshold_for_the_other_task(diabetes_split: tuple, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _run(diabetes_split, tmp_path, algorithm="linear", target="target", thresholds={"accuracy": ">= 0.9"})
    assert caught.value.field == "thresholds.accuracy"


def test_missing_target_column_is_a_config_error(iris_split: tuple, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _run(iris_split, tmp_path, algorithm="knn", target="colour")
    assert caught.value.field == "target"


def test_algorithm_that_cannot_do_the_task(iris_split: tuple, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _run(iris_split, tmp_path, algorithm="linear", target="species")
    assert caught.value.field == "algorithm" and "classification" in caught.value.message


def test_bad_estimator_parameter_value_is_a_config_error(iris_split: tuple, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _run(iris_split, tmp_path, algorithm="random_forest", target="species", params={"n_estimators": -3})
    assert caught.value.field == "params" and "n_estimators" in caught.value.message


def test_custom_estimator_needs_permission_and_trains_when_allowed(iris_split: tuple, tmp_path: Path) -> None:
    config = {
        "algorithm": "custom",
        "target": "species",
        "params": {"class_path": "sklearn.tree:DecisionTreeClassifier"},
    }
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(config)
    assert caught.value.field == "algorithm"
    result = train(TrainConfig.from_dict(config, allow_custom=True), *iris_split, output_dir=tmp_path)
    assert result.flavor == "custom" and result.metrics["accuracy"] > 0.85
    with pytest.raises(ValueError, match="pickle is refused"):
        load_predictor(result.bundle_path)
    bad = config | {"params": {"class_path": "no_such_module:Thing"}}
    with pytest.raises(ConfigError) as caught:
        train(TrainConfig.from_dict(bad, allow_custom=True), *iris_split, output_dir=tmp_path)
    assert caught.value.field == "params.class_path"


def test_features_travel_with_the_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 1, n),
            "city": rng.choice(["paris", "rome", "oslo"], n),
            "opened": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
            "vip": rng.random(n) > 0.5,
        }
    )
    frame.loc[::10, "amount"] = np.nan
    frame["label"] = np.where((frame["city"] == "rome") | frame["vip"], "yes", "no")
    config = TrainConfig.from_dict(
        {
            "algorithm": "logistic_regression",
            "target": "label",
            "features": {"impute": {"numeric": "median"}, "scale": "robust", "log": ["amount"]},
        }
    )
    result = train(config, frame[:200], frame[200:], output_dir=tmp_path)
    assert result.metrics["accuracy"] > 0.9
    kinds = {spec["name"]: spec["type"] for spec in result.signature["inputs"]}
    assert kinds == {"amount": "number", "city": "categorical", "opened": "datetime", "vip": "boolean"}
    predictor = load_predictor(result.bundle_path)
    row = {"amount": None, "city": "lisbon", "opened": "2024-05-01T10:00:00", "vip": "true"}
    assert predictor.predict([row]).tolist() == ["yes"]  # unseen city, missing amount: no crash


class ScriptedTrial:
    """A stand-in for optuna.Trial that asks to prune once `prune_at` steps were reported."""

    def __init__(self, prune_at: int) -> None:
        self.prune_at = prune_at
        self.reported: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        self.reported.append((step, value))

    def should_prune(self) -> bool:
        return len(self.reported) >= self.prune_at


@pytest.mark.parametrize("algorithm", ["xgboost", "pytorch_mlp"])
def test_pruning_raises_trial_pruned(algorithm: str, iris_split: tuple, tmp_path: Path) -> None:
    trial = ScriptedTrial(prune_at=3)
    config = TrainConfig.from_dict({"algorithm": algorithm, "target": "species", "epochs": 50})
    with pytest.raises(optuna.TrialPruned):
        train(config, *iris_split, output_dir=tmp_path, trial=trial)
    assert [step for step, _ in trial.reported] == [0, 1, 2]
    assert not (tmp_path / "model.zip").exists()


def test_real_optuna_trial_is_reported_to(iris_split: tuple, tmp_path: Path) -> None:
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    config = TrainConfig.from_dict({"algorithm": "xgboost", "target": "species", "params": {"n_estimators": 5}})
    train(config, *iris_split, output_dir=tmp_path, trial=trial)
    assert sorted(trial.storage.get_trial(trial._trial_id).intermediate_values) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("algorithm", "stop_after"), [("random_forest", 1), ("random_forest", 2), ("xgboost", 4), ("pytorch_mlp", 4)]
)
def test_cancellation_between_steps(algorithm: str, stop_after: int, iris_split: tuple, tmp_path: Path) -> None:
    calls: list[int] = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > stop_after

    config = TrainConfig.from_dict(
        {"algorithm": algorithm, "target": "species", "epochs": 50, "params": SMALL[algorithm]}
    )
    with pytest.raises(TrainingCancelled):
        train(config, *iris_split, should_stop=should_stop, output_dir=tmp_path)
    assert len(calls) == stop_after + 1  # it stopped at the first check that said so
    assert not (tmp_path / "model.zip").exists()
