"""The algorithm registry: which tasks each algorithm supports, its parameters, and its HPO search space.

`flavor` says how a trained model is fitted and bundled: "sklearn" algorithms become one Pipeline,
"xgboost" and "pytorch" have their own training loops (per-round / per-epoch metrics, pruning), and
"custom" is a user class loaded by import path and bundled as a pickle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.training.errors import ConfigError

CLASSIFICATION = "classification"
REGRESSION = "regression"
BOTH = (CLASSIFICATION, REGRESSION)

Suggest = Callable[[Any, str, str], dict[str, Any]]
Build = Callable[[str, dict[str, Any], int], Any]


@dataclass(frozen=True)
class Algorithm:
    name: str
    label: str
    flavor: str
    tasks: tuple[str, ...]
    defaults: Mapping[str, Any]
    space: Suggest
    build: Build | None = None
    # Parameters accepted beyond those with defaults (e.g. ones that default to "unset").
    extra_params: frozenset[str] = field(default_factory=frozenset)
    # A user class takes whatever its constructor takes, so no name can be checked up front.
    open_params: bool = False

    @property
    def allowed_params(self) -> frozenset[str]:
        return frozenset(self.defaults) | self.extra_params

    def resolve_params(self, params: Mapping[str, Any], *, field_prefix: str = "params") -> dict[str, Any]:
        """Defaults overlaid with `params`; an unknown name is a ConfigError naming it."""
        if not isinstance(params, Mapping):
            raise ConfigError(field_prefix, "must be an object of parameter names to values")
        for name in params:
            if not self.open_params and name not in self.allowed_params:
                allowed = ", ".join(sorted(self.allowed_params))
                raise ConfigError(f"{field_prefix}.{name}", f"unknown parameter for {self.name}; allowed: {allowed}")
        return {**self.defaults, **params}

    def suggest(self, trial: Any, prefix: str = "", task: str = CLASSIFICATION) -> dict[str, Any]:
        """Sample params from the default Optuna search space; trial parameter names are `prefix + name`."""
        return self.space(trial, prefix, task)


# ------------------------------------------------------------------------------------------- builders


def _random_forest(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestClassifier if task == CLASSIFICATION else RandomForestRegressor
    if task == REGRESSION and "class_weight" in params:
        raise ConfigError("params.class_weight", "only applies to classification")
    return cls(random_state=seed, **params)


def _gradient_boosting(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    cls = GradientBoostingClassifier if task == CLASSIFICATION else GradientBoostingRegressor
    return cls(random_state=seed, **params)


def _logistic_regression(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(random_state=seed, **params)


def _linear(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.linear_model import LinearRegression, Ridge

    if params["alpha"] == 0:
        return LinearRegression(fit_intercept=params["fit_intercept"])
    return Ridge(random_state=seed, **params)


def _svm(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.svm import SVC, SVR

    params = dict(params)
    epsilon = params.pop("epsilon")
    class_weight = params.pop("class_weight", None)
    if task == REGRESSION:
        if class_weight is not None:
            raise ConfigError("params.class_weight", "only applies to classification")
        return SVR(epsilon=epsilon, **params)
    from sklearn.calibration import CalibratedClassifierCV

    # SVC(probability=True) is deprecated; a sigmoid calibration gives the probabilities instead.
    return CalibratedClassifierCV(SVC(class_weight=class_weight, random_state=seed, **params), ensemble=False)


def _knn(task: str, params: dict[str, Any], seed: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    cls = KNeighborsClassifier if task == CLASSIFICATION else KNeighborsRegressor
    return cls(**params)


def _custom(task: str, params: dict[str, Any], seed: int) -> Any:
    params = dict(params)
    path = params.pop("class_path", None)
    if not isinstance(path, str) or ":" not in path:
        raise ConfigError("params.class_path", "must be an import path like 'package.module:Class'")
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("params.class_path", f"cannot import {path}: {exc}") from exc
    try:
        model = cls(**params)
    except TypeError as exc:
        raise ConfigError("params", f"{path} does not accept these parameters: {exc}") from exc
    if not hasattr(model, "fit") or not hasattr(model, "predict"):
        raise ConfigError("params.class_path", f"{path} has no fit/predict methods")
    return model


# ------------------------------------------------------------------------------------------- search spaces


def _space_random_forest(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int(f"{prefix}n_estimators", 50, 500, log=True),
        "max_depth": trial.suggest_int(f"{prefix}max_depth", 2, 32, log=True),
        "min_samples_leaf": trial.suggest_int(f"{prefix}min_samples_leaf", 1, 10),
        "max_features": trial.suggest_categorical(f"{prefix}max_features", ["sqrt", "log2", 1.0]),
    }


def _space_gradient_boosting(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int(f"{prefix}n_estimators", 50, 500, log=True),
        "learning_rate": trial.suggest_float(f"{prefix}learning_rate", 0.01, 0.3, log=True),
        "max_depth": trial.suggest_int(f"{prefix}max_depth", 2, 8),
        "subsample": trial.suggest_float(f"{prefix}subsample", 0.5, 1.0),
    }


def _space_logistic_regression(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    return {"C": trial.suggest_float(f"{prefix}C", 1e-3, 1e3, log=True)}


def _space_linear(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    return {"alpha": trial.suggest_float(f"{prefix}alpha", 1e-4, 1e3, log=True)}


def _space_svm(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    return {
        "C": trial.suggest_float(f"{prefix}C", 1e-2, 1e3, log=True),
        "kernel": trial.suggest_categorical(f"{prefix}kernel", ["rbf", "linear"]),
    }


def _space_knn(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    return {
        "n_neighbors": trial.suggest_int(f"{prefix}n_neighbors", 1, 50, log=True),
        "weights": trial.suggest_categorical(f"{prefix}weights", ["uniform", "distance"]),
    }


def _space_xgboost(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    return {
        "n_estimators": trial.suggest_int(f"{prefix}n_estimators", 50, 500, log=True),
        "max_depth": trial.suggest_int(f"{prefix}max_depth", 2, 10),
        "learning_rate": trial.suggest_float(f"{prefix}learning_rate", 0.01, 0.3, log=True),
        "subsample": trial.suggest_float(f"{prefix}subsample", 0.5, 1.0),
        "colsample_bytree": trial.suggest_float(f"{prefix}colsample_bytree", 0.5, 1.0),
        "min_child_weight": trial.suggest_float(f"{prefix}min_child_weight", 0.5, 10.0, log=True),
        "reg_lambda": trial.suggest_float(f"{prefix}reg_lambda", 1e-3, 10.0, log=True),
    }


def _space_pytorch_mlp(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    width = trial.suggest_categorical(f"{prefix}width", [16, 32, 64, 128])
    depth = trial.suggest_int(f"{prefix}depth", 1, 3)
    return {
        "hidden": [width] * depth,
        "dropout": trial.suggest_float(f"{prefix}dropout", 0.0, 0.5),
        "lr": trial.suggest_float(f"{prefix}lr", 1e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float(f"{prefix}weight_decay", 1e-6, 1e-2, log=True),
        "batch_size": trial.suggest_categorical(f"{prefix}batch_size", [16, 32, 64, 128]),
    }


def _space_custom(trial: Any, prefix: str, task: str) -> dict[str, Any]:
    # A user class has no known parameters, so there is nothing to search by default.
    return {}


# Parameters of the PyTorch loop; TrainConfig holds the first five at top level, `params` may override them.
TORCH_LOOP_PARAMS = ("epochs", "batch_size", "lr", "patience", "hidden")

ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm(
            name="random_forest",
            label="Random forest",
            flavor="sklearn",
            tasks=BOTH,
            defaults={"n_estimators": 100, "max_depth": None, "min_samples_split": 2, "min_samples_leaf": 1},
            extra_params=frozenset({"max_features", "bootstrap", "class_weight", "n_jobs", "criterion"}),
            space=_space_random_forest,
            build=_random_forest,
        ),
        Algorithm(
            name="gradient_boosting",
            label="Gradient boosting (scikit-learn)",
            flavor="sklearn",
            tasks=BOTH,
            defaults={"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3, "subsample": 1.0},
            extra_params=frozenset({"min_samples_leaf", "min_samples_split", "max_features"}),
            space=_space_gradient_boosting,
            build=_gradient_boosting,
        ),
        Algorithm(
            name="logistic_regression",
            label="Logistic regression",
            flavor="sklearn",
            tasks=(CLASSIFICATION,),
            defaults={"C": 1.0, "max_iter": 1000},
            extra_params=frozenset({"l1_ratio", "solver", "class_weight", "tol", "fit_intercept"}),
            space=_space_logistic_regression,
            build=_logistic_regression,
        ),
        Algorithm(
            name="linear",
            label="Linear regression (ridge when alpha > 0)",
            flavor="sklearn",
            tasks=(REGRESSION,),
            defaults={"alpha": 1.0, "fit_intercept": True},
            space=_space_linear,
            build=_linear,
        ),
        Algorithm(
            name="svm",
            label="Support vector machine",
            flavor="sklearn",
            tasks=BOTH,
            defaults={"C": 1.0, "kernel": "rbf", "gamma": "scale", "degree": 3, "epsilon": 0.1},
            extra_params=frozenset({"class_weight", "coef0"}),
            space=_space_svm,
            build=_svm,
        ),
        Algorithm(
            name="knn",
            label="k nearest neighbours",
            flavor="sklearn",
            tasks=BOTH,
            defaults={"n_neighbors": 5, "weights": "uniform", "p": 2},
            extra_params=frozenset({"leaf_size", "algorithm"}),
            space=_space_knn,
            build=_knn,
        ),
        Algorithm(
            name="xgboost",
            label="XGBoost",
            flavor="xgboost",
            tasks=BOTH,
            defaults={
                "n_estimators": 100,
                "max_depth": 6,
                "learning_rate": 0.1,
                "subsample": 1.0,
                "colsample_bytree": 1.0,
                "min_child_weight": 1.0,
                "reg_lambda": 1.0,
                "reg_alpha": 0.0,
                "gamma": 0.0,
                "tree_method": "hist",
            },
            extra_params=frozenset({"nthread", "max_bin"}),
            space=_space_xgboost,
        ),
        Algorithm(
            name="pytorch_mlp",
            label="Neural network (PyTorch MLP)",
            flavor="pytorch",
            tasks=BOTH,
            defaults={"dropout": 0.1, "weight_decay": 0.0, "val_fraction": 0.15},
            extra_params=frozenset(TORCH_LOOP_PARAMS),
            space=_space_pytorch_mlp,
        ),
        Algorithm(
            name="custom",
            label="Custom estimator (import path)",
            flavor="custom",
            tasks=BOTH,
            defaults={},
            open_params=True,
            space=_space_custom,
            build=_custom,
        ),
    )
}


def get_algorithm(name: Any, *, allow_custom: bool = False) -> Algorithm:
    if name not in ALGORITHMS:
        raise ConfigError("algorithm", f"unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}")
    if name == "custom" and not allow_custom:
        raise ConfigError("algorithm", "custom estimators run arbitrary code and are not allowed here")
    return ALGORITHMS[name]
