"""The pipeline config: parsing, normalising, and every way it can be wrong (no database)."""

from __future__ import annotations

import pytest

from apps.experiments.pipeline_config import normalise, parse_text, search_metric, stages_for
from worker.training.errors import ConfigError

SEED_EXAMPLE = """
experiment_id: exp_001
data_config: {dataset: iris, split: 0.8}
model_config: {algorithm: random_forest, n_estimators: 100}
deployment_config: {strategy: blue_green, replicas: 3}
"""


def _error(text: str, **overrides: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        normalise(parse_text(text), **overrides)
    return caught.value


def test_the_seed_example_normalises_to_a_train_config() -> None:
    config = normalise(parse_text(SEED_EXAMPLE))
    assert config["experiment_id"] == "exp_001"
    assert config["data"] == {"dataset": "iris", "version": None, "split": 0.8, "seed": 0, "stratify": True}
    assert config["train"]["algorithm"] == "random_forest"
    assert config["train"]["params"] == {"n_estimators": 100}
    assert config["train"]["target"] == "target"
    assert config["deployment_config"] == {"strategy": "blue_green", "replicas": 3}
    assert config["search"] is None


def test_training_keys_map_to_the_train_config() -> None:
    config = normalise(
        {
            "data_config": {
                "dataset": "wine",
                "version": 2,
                "split": 0.7,
                "target": "label",
                "features": {"scale": "minmax"},
            },
            "model_config": {
                "algorithm": "pytorch_mlp",
                "task": "classification",
                "seed": 5,
                "cv_folds": 3,
                "thresholds": {"accuracy": ">= 0.8"},
                "epochs": 5,
                "hidden": [8],
                "dropout": 0.2,
            },
        }
    )
    train = config["train"]
    assert (train["task"], train["seed"], train["cv_folds"], train["epochs"], train["hidden"]) == (
        "classification",
        5,
        3,
        5,
        [8],
    )
    assert train["params"] == {"dropout": 0.2}
    assert train["features"] == {"scale": "minmax"}
    assert train["target"] == "label"
    assert config["data"]["seed"] == 5, "the split follows the model seed unless data_config sets one"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("bogus: 1\ndata_config: {dataset: iris}\nmodel_config: {algorithm: knn}", "bogus"),
        ("data_config: {dataset: iris, sample: 3}\nmodel_config: {algorithm: knn}", "data_config.sample"),
        (
            "data_config: {dataset: iris}\nmodel_config: {algorithm: knn, search: {trials: 3}}",
            "model_config.search.trials",
        ),
        ("data_config: {dataset: iris}\nmodel_config: {algorithm: random_forest, n_trees: 3}", "model_config.n_trees"),
        ("data_config: {dataset: iris}\nmodel_config: {algorithm: deep_forest}", "model_config.algorithm"),
        ("data_config: {dataset: iris}\nmodel_config: {algorithm: custom}", "model_config.algorithm"),
        ("data_config: {dataset: iris}\nmodel_config: {}", "model_config.algorithm"),
        ("model_config: {algorithm: knn}", "data_config.dataset"),
        ("data_config: {dataset: iris, split: 1.5}\nmodel_config: {algorithm: knn}", "data_config.split"),
        ("data_config: {dataset: iris}\nmodel_config: {algorithm: knn, cv_folds: 1}", "model_config.cv_folds"),
        (
            "data_config: {dataset: iris}\nmodel_config: {algorithm: knn, thresholds: {accuracy: high}}",
            "model_config.thresholds.accuracy",
        ),
        (
            "data_config: {dataset: iris, features: {scale: huge}}\nmodel_config: {algorithm: knn}",
            "data_config.features.scale",
        ),
        ("data_config: {dataset: iris}\nmodel_config: {algorithm: linear, task: classification}", "model_config.task"),
        ("data_config: {dataset: iris, target: a}\nmodel_config: {algorithm: knn, target: b}", "model_config.target"),
    ],
)
def test_a_bad_key_or_value_is_named(text: str, field: str) -> None:
    assert _error(text).field == field


def test_invalid_yaml_names_line_and_column() -> None:
    error = _error("data_config: {dataset: iris\nmodel_config: [")
    assert error.field == "config"
    assert "not valid YAML at line" in error.message


@pytest.mark.parametrize("text", ["", "   ", "- a\n- b", "just text"])
def test_a_config_must_be_a_mapping(text: str) -> None:
    with pytest.raises(ConfigError, match="config"):
        normalise(parse_text(text))


@pytest.mark.parametrize(
    ("space", "field", "words"),
    [
        ("{max_depth: {type: int, low: 8, high: 2}}", "model_config.search.space.max_depth", "cannot be sampled"),
        (
            "{learning_rate: {type: float, low: 0, high: 1, log: true}}",
            "model_config.search.space.learning_rate.low",
            "low > 0",
        ),
        ("{max_depth: {type: categorical, choices: []}}", "model_config.search.space.max_depth.choices", "empty"),
        ("{max_depth: {type: normal, low: 1, high: 2}}", "model_config.search.space.max_depth.type", "one of"),
        ("{max_depth: {type: int, low: 1.5, high: 4}}", "model_config.search.space.max_depth.low", "integer"),
        ("{depth: {type: int, low: 1, high: 4}}", "model_config.search.space.depth", "unknown parameter"),
        ("{random_forest: {max_depth: [2, 3]}}", "model_config.search.space.random_forest", "not among"),
        ("{xgboost: {}}", "model_config.search.space.xgboost", "nothing to sample"),
    ],
)
def test_a_search_space_that_cannot_be_sampled_is_refused(space: str, field: str, words: str) -> None:
    error = _error(f"data_config: {{dataset: x}}\nmodel_config: {{algorithm: xgboost, search: {{space: {space}}}}}")
    assert error.field == field
    assert words in error.message


def test_search_normalises_with_defaults_and_model_selection() -> None:
    config = normalise(
        parse_text(
            """
data_config: {dataset: bc}
model_config:
  algorithm: xgboost
  search:
    n_trials: 4
    algorithms: [xgboost, random_forest]
    space: {random_forest: {n_estimators: {type: int, low: 5, high: 10}}, xgboost: {max_depth: [2, 3]}}
"""
        )
    )
    search = config["search"]
    assert search["n_trials"] == 4
    assert search["pruner"] == "median", "xgboost reports per round, so it is pruned by default"
    assert search["sampler"] == "tpe"
    assert search["space"]["xgboost"]["max_depth"] == {"type": "categorical", "choices": [2, 3]}
    assert search_metric(search, "classification") == ("accuracy", "maximize")
    assert search_metric({"metric": "rmse"}, "regression") == ("rmse", "minimize")
    with pytest.raises(ConfigError, match="not a classification metric"):
        search_metric({"metric": "rmse"}, "classification")


def test_sklearn_only_searches_are_not_pruned_by_default() -> None:
    config = normalise({"data_config": {"dataset": "x"}, "model_config": {"algorithm": "knn", "search": {}}})
    assert config["search"]["pruner"] == "none"


def test_cli_overrides_replace_experiment_and_algorithm() -> None:
    config = normalise(
        parse_text(SEED_EXAMPLE.replace("n_estimators: 100", "n_estimators: 100, min_samples_split: 4")),
        experiment_id="exp_002",
        algorithm="xgboost",
    )
    assert config["experiment_id"] == "exp_002"
    assert config["train"]["algorithm"] == "xgboost"
    assert config["train"]["params"] == {"n_estimators": 100}
    assert config["notes"] == ["dropped random_forest parameter 'min_samples_split': xgboost has no such parameter"]


def test_stage_selection() -> None:
    assert stages_for("data_processing") == ("ingest", "validate", "features")
    assert stages_for("train") == ("ingest", "validate", "features", "train")
    assert stages_for(None)[-1] == "deploy"
    with pytest.raises(ConfigError, match="unknown stage 'fit'"):
        stages_for("fit")
