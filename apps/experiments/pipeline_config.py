"""The pipeline config: YAML (or JSON) text or a dict, checked and normalised into plain JSON.

Django-free, so it can be tested and reused alone. Every error is a `ConfigError` whose `field` is a
dotted path into the config as the user wrote it (`model_config.n_estimators`,
`model_config.search.space.max_depth`), so the API and the UI can point at the offending key.

    experiment_id: exp_001                       # the experiment, created if missing
    data_config: {dataset: iris, split: 0.8}      # dataset name, optional version, train fraction
    model_config: {algorithm: random_forest, n_estimators: 100}   # params sit beside `algorithm`
    deployment_config: {strategy: blue_green, replicas: 3}        # handed to the deploy stage handler
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml

from worker.training.algorithms import ALGORITHMS, get_algorithm
from worker.training.config import TrainConfig
from worker.training.errors import ConfigError
from worker.training.evaluate import CLASSIFICATION_METRICS, LOWER_IS_BETTER, METRICS_BY_TASK, REGRESSION_METRICS

MAX_CONFIG_CHARS = 200_000
TOP_KEYS = (
    "experiment_id",
    "name",
    "description",
    "data_config",
    "model_config",
    "registry_config",
    "deployment_config",
)
DATA_KEYS = ("dataset", "version", "split", "target", "features", "seed", "stratify")
# model_config keys that are not algorithm parameters; every other key is a parameter of the algorithm.
MODEL_KEYS = (
    "algorithm",
    "params",
    "target",
    "features",
    "task",
    "seed",
    "cv_folds",
    "thresholds",
    "search",
    "epochs",
    "batch_size",
    "lr",
    "patience",
    "hidden",
)
SEARCH_KEYS = ("n_trials", "timeout", "metric", "direction", "sampler", "pruner", "algorithms", "space")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
# Algorithms that report intermediate values per boosting round / epoch, so a pruner can stop them early.
PRUNABLE_FLAVORS = ("xgboost", "pytorch")
SPACE_TYPES = ("int", "float", "categorical")
MAX_TRIALS = 1000
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
DEFAULT_SPLIT = 0.8
DEFAULT_TARGET = "target"
DEFAULT_TRIALS = 10
DEFAULT_METRIC = {"classification": "accuracy", "regression": "rmse"}
# Name of the trial parameter that picks the algorithm when a search spans several.
ALGORITHM_PARAM = "algorithm"

STAGES = ("ingest", "validate", "features", "train", "evaluate", "register", "deploy")
# `--stage` groups (the seed CLI's names) and single stages; each runs its stages and those before them.
STAGE_GROUPS: dict[str, tuple[str, ...]] = {
    "data_processing": ("ingest", "validate", "features"),
    "training": ("ingest", "validate", "features", "train"),
    "evaluation": ("ingest", "validate", "features", "train", "evaluate"),
    "registration": ("ingest", "validate", "features", "train", "evaluate", "register"),
    "deployment": STAGES,
    "all": STAGES,
    **{stage: STAGES[: index + 1] for index, stage in enumerate(STAGES)},
}


def parse_text(text: str) -> dict[str, Any]:
    """YAML (JSON is YAML too) to a dict; a syntax error names the line and column."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("config", "is empty; give a YAML or JSON pipeline config")
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError("config", f"is {len(text):,} characters long; the limit is {MAX_CONFIG_CHARS:,}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError("config", f"is not valid YAML{where}: {problem}") from None
    if not isinstance(data, Mapping):
        raise ConfigError("config", f"must be a mapping of keys to values, not {type(data).__name__}")
    return dict(data)


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(field, "must be a mapping")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(field, f"keys must be strings, got {key!r}")
    return dict(value)


def _unknown(data: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}", f"unknown key; expected some of {', '.join(allowed)}")


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ConfigError(field, "must be a non-empty name")
    name = str(value).strip()
    if len(name) > 100:
        raise ConfigError(field, f"is {len(name)} characters long; the limit is 100")
    return name


def _data_config(raw: Any, model: dict[str, Any]) -> dict[str, Any]:
    data = _mapping(raw, "data_config")
    _unknown(data, DATA_KEYS, "data_config.")
    if "dataset" not in data:
        raise ConfigError("data_config.dataset", "name the dataset to train on")
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ConfigError("data_config.version", f"must be a version number (1, 2, …), got {version!r}")
    split = data.get("split", DEFAULT_SPLIT)
    if isinstance(split, bool) or not isinstance(split, int | float) or not 0 < split < 1:
        raise ConfigError("data_config.split", f"is the training fraction, between 0 and 1 (exclusive); got {split!r}")
    stratify = data.get("stratify", True)
    if not isinstance(stratify, bool):
        raise ConfigError("data_config.stratify", "must be true or false")
    for key in ("target", "features"):
        if key in data and key in model:
            raise ConfigError(f"model_config.{key}", "is also set in data_config; set it in one place")
    seed = data.get("seed", model.get("seed", 0))
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError("data_config.seed", f"must be an integer from 0 to 2**32-1, got {seed!r}")
    return {
        "dataset": _name(data["dataset"], "data_config.dataset"),
        "version": version,
        "split": float(split),
        "seed": seed,
        "stratify": stratify,
        "target": data.get("target", model.get("target", DEFAULT_TARGET)),
        "features": data.get("features", model.get("features")),
    }


def _renamed(exc: ConfigError, *, explicit_params: bool) -> ConfigError:
    """A TrainConfig error renamed to where the key sits in the pipeline config."""
    field = exc.field
    if field.startswith("params.") and not explicit_params:
        field = "model_config." + field.removeprefix("params.")
    elif field == "target" or field.startswith("features"):
        field = "data_config." + field if field != "target" else "data_config.target"
    else:
        field = "model_config." + field
    return ConfigError(field, exc.message)


def _train_config(model: dict[str, Any], data: dict[str, Any], algorithm: str) -> dict[str, Any]:
    explicit = "params" in model
    params = _mapping(model.get("params"), "model_config.params")
    for key, value in model.items():
        if key not in MODEL_KEYS:
            if explicit:
                raise ConfigError(f"model_config.{key}", "unknown key; algorithm parameters go under `params` here")
            params[key] = value
    train = {
        "algorithm": algorithm,
        "target": data["target"],
        "params": params,
        **{key: model[key] for key in ("task", "seed", "cv_folds", "thresholds") if key in model},
        **{key: model[key] for key in ("epochs", "batch_size", "lr", "patience", "hidden") if key in model},
    }
    if data["features"] is not None:
        train["features"] = data["features"]
    try:
        return TrainConfig.from_dict(train).to_dict()
    except ConfigError as exc:
        raise _renamed(exc, explicit_params=explicit) from None


def _number(spec: Mapping[str, Any], key: str, field: str, *, integer: bool) -> float | int:
    value = spec.get(key)
    kinds = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{field}.{key}", f"must be {kind}, got {value!r}")
    return value


def check_space_spec(spec: Any, field: str) -> dict[str, Any]:
    """One parameter's search range, normalised; a range that cannot be sampled is a ConfigError.

    Forms: `[a, b, c]` (categorical), `{type: int|float, low, high, log?, step?}`,
    `{type: categorical, choices: [...]}`, or a plain value (fixed, not searched).
    """
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, Mapping):
        return {"type": "fixed", "value": spec}
    kind = spec.get("type")
    if kind not in SPACE_TYPES:
        raise ConfigError(f"{field}.type", f"must be one of {', '.join(SPACE_TYPES)}, got {kind!r}")
    allowed = ("type", "choices") if kind == "categorical" else ("type", "low", "high", "log", "step")
    _unknown(spec, allowed, f"{field}.")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{field}.choices", "must be a non-empty list; an empty list cannot be sampled")
        for choice in choices:
            if choice is not None and not isinstance(choice, bool | int | float | str):
                raise ConfigError(f"{field}.choices", f"choices must be numbers, strings, booleans or null: {choice!r}")
        return {"type": "categorical", "choices": list(choices)}
    integer = kind == "int"
    low, high = _number(spec, "low", field, integer=integer), _number(spec, "high", field, integer=integer)
    if low > high:
        raise ConfigError(field, f"low ({low}) is above high ({high}); the range is empty and cannot be sampled")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{field}.log", "must be true or false")
    if log and low <= 0:
        raise ConfigError(f"{field}.low", f"a log-scaled range needs low > 0, got {low}")
    normalised: dict[str, Any] = {"type": kind, "low": low, "high": high, "log": log}
    if "step" in spec:
        step = _number(spec, "step", field, integer=integer)
        if step <= 0:
            raise ConfigError(f"{field}.step", f"must be positive, got {step}")
        if log:
            raise ConfigError(f"{field}.step", "cannot be combined with log: true")
        normalised["step"] = step
    return normalised


def _search_config(raw: Any, algorithm: str, task: str) -> dict[str, Any]:
    search = _mapping(raw, "model_config.search")
    _unknown(search, SEARCH_KEYS, "model_config.search.")
    n_trials = search.get("n_trials", DEFAULT_TRIALS)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or not 1 <= n_trials <= MAX_TRIALS:
        raise ConfigError(
            "model_config.search.n_trials", f"must be an integer from 1 to {MAX_TRIALS}, got {n_trials!r}"
        )
    timeout = search.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        raise ConfigError("model_config.search.timeout", f"is a time budget in seconds (> 0), got {timeout!r}")
    algorithms = search.get("algorithms", [algorithm])
    if isinstance(algorithms, str):
        algorithms = [algorithms]
    if not isinstance(algorithms, list) or not algorithms:
        raise ConfigError("model_config.search.algorithms", "must be a non-empty list of algorithm names")
    for index, name in enumerate(algorithms):
        try:
            found = get_algorithm(name)
        except ConfigError as exc:
            raise ConfigError(f"model_config.search.algorithms.{index}", exc.message) from None
        if task != "auto" and task not in found.tasks:
            raise ConfigError(f"model_config.search.algorithms.{index}", f"{name} does not support {task}")
    if len(set(algorithms)) != len(algorithms):
        raise ConfigError("model_config.search.algorithms", "lists an algorithm twice")
    metric = search.get("metric")
    known = METRICS_BY_TASK.get(task, CLASSIFICATION_METRICS + REGRESSION_METRICS)
    if metric is not None and metric not in known:
        raise ConfigError(
            "model_config.search.metric", f"unknown metric {metric!r}; expected one of {', '.join(known)}"
        )
    direction = search.get("direction")
    if direction is not None and direction not in ("maximize", "minimize"):
        raise ConfigError("model_config.search.direction", f"must be maximize or minimize, got {direction!r}")
    sampler = search.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise ConfigError("model_config.search.sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    prunable = any(ALGORITHMS[name].flavor in PRUNABLE_FLAVORS for name in algorithms)
    pruner = search.get("pruner", "median" if prunable else "none")
    if pruner not in PRUNERS:
        raise ConfigError("model_config.search.pruner", f"must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    return {
        "n_trials": n_trials,
        "timeout": timeout,
        "metric": metric,
        "direction": direction,
        "sampler": sampler,
        "pruner": pruner,
        "algorithms": list(algorithms),
        "space": _search_space(search.get("space"), algorithms),
    }


def _search_space(raw: Any, algorithms: list[str]) -> dict[str, dict[str, Any]]:
    """Per algorithm, the parameters to search; an algorithm without an entry uses its default space.

    The space is either keyed by algorithm (`{xgboost: {max_depth: …}}`) or, for a one-algorithm
    search, keyed by parameter (`{max_depth: …}`).
    """
    space = _mapping(raw, "model_config.search.space")
    if not space:
        return {}
    by_algorithm = all(key in ALGORITHMS for key in space)
    if not by_algorithm:
        if len(algorithms) > 1:
            raise ConfigError(
                "model_config.search.space", "a search over several algorithms keys its space by algorithm"
            )
        space = {algorithms[0]: space}
    normalised: dict[str, dict[str, Any]] = {}
    for name, params in space.items():
        prefix = f"model_config.search.space.{name}" if by_algorithm else "model_config.search.space"
        if name not in algorithms:
            raise ConfigError(prefix, f"{name} is not among the searched algorithms ({', '.join(algorithms)})")
        params = _mapping(params, prefix)
        if not params:
            raise ConfigError(prefix, "is empty; there is nothing to sample")
        algorithm = ALGORITHMS[name]
        normalised[name] = {}
        for param, spec in params.items():
            field = f"{prefix}.{param}"
            if not algorithm.open_params and param not in algorithm.allowed_params:
                allowed = ", ".join(sorted(algorithm.allowed_params))
                raise ConfigError(field, f"unknown parameter for {name}; allowed: {allowed}")
            normalised[name][param] = check_space_spec(spec, field)
    return normalised


def normalise(
    data: Mapping[str, Any],
    *,
    experiment_id: str | None = None,
    algorithm: str | None = None,
) -> dict[str, Any]:
    """The checked config as plain JSON. `experiment_id`/`algorithm` override the file (the CLI's flags)."""
    if not isinstance(data, Mapping):
        raise ConfigError("config", "must be a mapping of keys to values")
    _unknown(data, TOP_KEYS, "")
    model = _mapping(data.get("model_config"), "model_config")
    notes: list[str] = []
    if algorithm:
        previous = model.get("algorithm")
        model["algorithm"] = algorithm
        if previous and previous != algorithm:
            # Parameters of the algorithm in the file may not exist for the override: leave those out.
            new = get_algorithm(algorithm)
            for key in [k for k in model if k not in MODEL_KEYS and k not in new.allowed_params]:
                model.pop(key)
                notes.append(f"dropped {previous} parameter {key!r}: {algorithm} has no such parameter")
    fixed_params = [key for key in model if key not in MODEL_KEYS]
    search_raw = model.get("search")
    chosen = model.get("algorithm")
    if chosen is None and isinstance(search_raw, Mapping) and isinstance(search_raw.get("algorithms"), list):
        chosen = (search_raw["algorithms"] or [None])[0]
    if chosen is None:
        raise ConfigError("model_config.algorithm", f"name an algorithm: one of {', '.join(ALGORITHMS)}")
    try:
        get_algorithm(chosen)
    except ConfigError as exc:
        raise ConfigError("model_config.algorithm", exc.message) from None
    data_config = _data_config(data.get("data_config"), model)
    train = _train_config({k: v for k, v in model.items() if k != "search"}, data_config, chosen)
    search = _search_config(search_raw, chosen, train["task"]) if search_raw is not None else None
    if search is not None and chosen not in search["algorithms"]:
        raise ConfigError("model_config.algorithm", f"{chosen} is not among search.algorithms")
    if search is not None and fixed_params and len(search["algorithms"]) > 1:
        raise ConfigError(
            f"model_config.{fixed_params[0]}",
            "fixed parameters beside `algorithm` are ambiguous in a search over several algorithms",
        )
    name = data.get("name")
    return {
        "experiment_id": _name(experiment_id or data.get("experiment_id", "default"), "experiment_id"),
        "name": _name(name, "name") if name is not None else "",
        "description": str(data.get("description") or ""),
        "data": {key: data_config[key] for key in ("dataset", "version", "split", "seed", "stratify")},
        "train": train,
        "search": search,
        "registry_config": _mapping(data.get("registry_config"), "registry_config"),
        "deployment_config": _mapping(data.get("deployment_config"), "deployment_config"),
        "notes": notes,
    }


def stages_for(selection: str | None) -> tuple[str, ...]:
    """The stages `--stage <selection>` runs (the selection's and those it depends on)."""
    if not selection:
        return STAGES
    if selection not in STAGE_GROUPS:
        raise ConfigError("stage", f"unknown stage {selection!r}; expected one of {', '.join(STAGE_GROUPS)}")
    return STAGE_GROUPS[selection]


def search_metric(search: Mapping[str, Any], task: str) -> tuple[str, str]:
    """(metric, direction) of a search, once the task is known."""
    metric = search.get("metric") or DEFAULT_METRIC[task]
    if metric not in METRICS_BY_TASK[task]:
        raise ConfigError("model_config.search.metric", f"{metric} is not a {task} metric")
    direction = search.get("direction") or ("minimize" if metric in LOWER_IS_BETTER else "maximize")
    return metric, direction
