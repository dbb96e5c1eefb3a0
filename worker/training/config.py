"""TrainConfig: one validated training request, built from plain JSON by `TrainConfig.from_dict`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from worker.training.algorithms import get_algorithm
from worker.training.errors import ConfigError
from worker.training.evaluate import parse_threshold
from worker.training.features import check_feature_config

TASK_CHOICES = ("auto", "classification", "regression")
# task="auto": an integer target with at most this many distinct values is a set of class labels.
AUTO_MAX_INTEGER_CLASSES = 20
MAX_CV_FOLDS = 20


def _int(d: Mapping, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(key, f"must be {bounds}, got {value}")
    return int(value)


def _hidden(value: Any, field_name: str) -> list[int]:
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(field_name, "must be a non-empty list of layer widths")
    for width in value:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 4096:
            raise ConfigError(field_name, f"layer widths must be integers from 1 to 4096, got {width!r}")
    return [int(width) for width in value]


@dataclass
class TrainConfig:
    algorithm: str
    target: str
    params: dict[str, Any] = field(default_factory=dict)
    task: str = "auto"
    features: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    cv_folds: int = 0
    thresholds: dict[str, str] = field(default_factory=dict)
    # The PyTorch loop; `params` may override each of these (HPO samples them there).
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 10
    hidden: list[int] = field(default_factory=lambda: [64, 32])
    # Set only by `from_dict(..., allow_custom=True)`: custom estimators import and run user code.
    allow_custom: bool = False

    KEYS = (
        "algorithm",
        "target",
        "params",
        "task",
        "features",
        "seed",
        "cv_folds",
        "thresholds",
        "epochs",
        "batch_size",
        "lr",
        "patience",
        "hidden",
    )

    @classmethod
    def from_dict(cls, d: Any, *, allow_custom: bool = False) -> TrainConfig:
        if not isinstance(d, Mapping):
            raise ConfigError("config", "must be an object")
        unknown = [key for key in d if key not in cls.KEYS]
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting; expected some of {', '.join(cls.KEYS)}")
        algorithm = get_algorithm(d.get("algorithm"), allow_custom=allow_custom)
        target = d.get("target")
        if not isinstance(target, str) or not target:
            raise ConfigError("target", "name the target column")
        task = d.get("task", "auto")
        if task not in TASK_CHOICES:
            raise ConfigError("task", f"must be one of {', '.join(TASK_CHOICES)}, got {task!r}")
        if task != "auto" and task not in algorithm.tasks:
            raise ConfigError("task", f"{algorithm.name} does not support {task}")
        params = dict(d.get("params") or {})
        algorithm.resolve_params(params)
        if "hidden" in params:
            params["hidden"] = _hidden(params["hidden"], "params.hidden")
        features = check_feature_config(d.get("features"))
        thresholds = d.get("thresholds") or {}
        if not isinstance(thresholds, Mapping):
            raise ConfigError("thresholds", "must be an object like {'accuracy': '>= 0.9'}")
        for name, spec in thresholds.items():
            parse_threshold(name, spec, task=None if task == "auto" else task)
        cv_folds = _int(d, "cv_folds", 0, minimum=0, maximum=MAX_CV_FOLDS)
        if cv_folds == 1:
            raise ConfigError("cv_folds", "use 0 for no cross-validation, or at least 2 folds")
        lr = d.get("lr", 1e-3)
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr <= 10:
            raise ConfigError("lr", f"must be a number in (0, 10], got {lr!r}")
        return cls(
            algorithm=algorithm.name,
            target=target,
            params=params,
            task=task,
            features={key: value for key, value in features.items() if key in (d.get("features") or {})},
            seed=_int(d, "seed", 0, minimum=0, maximum=2**32 - 1),
            cv_folds=cv_folds,
            thresholds=dict(thresholds),
            epochs=_int(d, "epochs", 50, minimum=1, maximum=10_000),
            batch_size=_int(d, "batch_size", 32, minimum=1, maximum=65_536),
            lr=float(lr),
            patience=_int(d, "patience", 10, minimum=1, maximum=10_000),
            hidden=_hidden(d.get("hidden", [64, 32]), "hidden"),
            allow_custom=allow_custom,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("allow_custom")
        return data


def infer_task(target: pd.Series) -> str:
    """task="auto": classification for non-numeric or boolean targets, and for integer targets with at
    most AUTO_MAX_INTEGER_CLASSES distinct values; regression for every other numeric target (floats)."""
    values = target.dropna()
    if pd.api.types.is_bool_dtype(values.dtype) or not pd.api.types.is_numeric_dtype(values.dtype):
        return "classification"
    if pd.api.types.is_integer_dtype(values.dtype) and values.nunique() <= AUTO_MAX_INTEGER_CLASSES:
        return "classification"
    return "regression"
