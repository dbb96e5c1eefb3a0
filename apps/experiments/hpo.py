"""Optuna plumbing: the study storage in our database, samplers, pruners and sampling a trial's params.

Studies live in the console's own database (Optuna's RDB storage), so trial tasks on any number of
Celery workers load the same study by name. The SQLAlchemy URL is built from Django's DATABASES.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import optuna
from django.db import connections
from sqlalchemy.pool import NullPool

from apps.experiments.pipeline_config import ALGORITHM_PARAM
from worker.training.algorithms import ALGORITHMS

# Median pruning starts once this many trials have finished and after this many rounds/epochs.
PRUNER_STARTUP_TRIALS = 2
PRUNER_WARMUP_STEPS = 5

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(alias: str = "default") -> str:
    """postgresql+psycopg2://… for Postgres, sqlite:///… for the zero-setup database."""
    db = connections[alias].settings_dict
    engine = db["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    if engine.endswith("postgresql"):
        user = quote(db.get("USER") or "", safe="")
        password = quote(db.get("PASSWORD") or "", safe="")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = db.get("HOST") or ""
        port = f":{db['PORT']}" if db.get("PORT") else ""
        options = db.get("OPTIONS") or {}
        query = "&".join(f"{quote(str(k))}={quote(str(v))}" for k, v in options.items() if isinstance(v, str | int))
        return f"postgresql+psycopg2://{auth}{host}{port}/{quote(db['NAME'], safe='')}" + (f"?{query}" if query else "")
    raise ValueError(f"Optuna storage is not supported on {engine}")


def storage() -> optuna.storages.RDBStorage:
    # NullPool: a worker holds no idle connections between trials (and tests can drop their database).
    return optuna.storages.RDBStorage(storage_url(), engine_kwargs={"poolclass": NullPool})


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(kind: str) -> optuna.pruners.BasePruner:
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_STEPS)
    return optuna.pruners.NopPruner()


def _sample_spec(trial: optuna.Trial, name: str, spec: Mapping[str, Any]) -> Any:
    kind = spec["type"]
    if kind == "fixed":
        return spec["value"]
    if kind == "categorical":
        return trial.suggest_categorical(name, spec["choices"])
    if kind == "int":
        return trial.suggest_int(name, spec["low"], spec["high"], log=spec["log"], step=spec.get("step", 1))
    return trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"], step=spec.get("step"))


def sample_params(trial: optuna.Trial, search: Mapping[str, Any], task: str) -> tuple[str, dict[str, Any]]:
    """(algorithm, params) for one trial. Several algorithms: the trial first picks one (model selection),
    and its parameters are named `<algorithm>__<param>` in Optuna so each algorithm keeps its own space."""
    algorithms = search["algorithms"]
    algorithm = algorithms[0] if len(algorithms) == 1 else trial.suggest_categorical(ALGORITHM_PARAM, algorithms)
    prefix = "" if len(algorithms) == 1 else f"{algorithm}__"
    space = search.get("space", {}).get(algorithm)
    if space:
        return algorithm, {name: _sample_spec(trial, prefix + name, spec) for name, spec in space.items()}
    return algorithm, ALGORITHMS[algorithm].suggest(trial, prefix, task)


class PruningTrial:
    """The trial as the trainer sees it. Trainers report losses (lower is better) per round/epoch; when
    the study maximises, the values are negated so the median pruner compares them the right way."""

    def __init__(self, trial: optuna.Trial, direction: str) -> None:
        self.trial = trial
        self.sign = -1.0 if direction == "maximize" else 1.0

    def report(self, value: float, step: int) -> None:
        self.trial.report(self.sign * float(value), step)

    def should_prune(self) -> bool:
        return self.trial.should_prune()


def param_importances(study: optuna.Study) -> dict[str, Any]:
    """{"values": {param: importance}} or {"note": why there are none} (too few trials, one value each…)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {"note": f"parameter importances need at least 2 completed trials; this study has {len(complete)}"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            values = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            return {"note": f"parameter importances could not be computed: {exc}"}
    if not values:
        return {"note": "no parameter was sampled in every completed trial, so none can be ranked"}
    result: dict[str, Any] = {"values": {name: float(value) for name, value in values.items()}}
    # Optuna warns when the trials cannot tell the parameters apart; the page shows why they look equal.
    notes = [str(warning.message) for warning in caught if issubclass(warning.category, UserWarning)]
    if notes:
        result["note"] = " ".join(dict.fromkeys(notes))
    return result
