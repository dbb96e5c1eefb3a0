"""The fitting loops per flavor. Each returns the keyword arguments `save_bundle` needs for its flavor.

Inputs are frames already coerced to the model signature (serving.signature.validate_input), so the
preprocessor sees in training exactly the dtypes it will see in serving.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from worker.training.errors import ConfigError, TrainingCancelled

MetricSink = Callable[[str, int, float], None]


@dataclass
class Hooks:
    """What a fitting loop reports to and listens to; every member is optional."""

    emit: MetricSink | None = None
    log: Callable[[str], None] | None = None
    should_stop: Callable[[], bool] | None = None
    trial: Any = None

    def metric(self, name: str, step: int, value: float) -> None:
        if self.emit is not None:
            self.emit(name, step, float(value))

    def info(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("training was cancelled")

    def report(self, value: float, step: int) -> None:
        """Report an intermediate value to the Optuna trial; raise TrialPruned when it says prune."""
        if self.trial is None:
            return
        import optuna

        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.4g})")


def _param_error(exc: Exception) -> ConfigError:
    return ConfigError("params", str(exc).splitlines()[0])


def fit_sklearn(
    estimator: Any, preprocessor: Any, x_train: pd.DataFrame, y_train: np.ndarray, hooks: Hooks
) -> dict[str, Any]:
    from sklearn.pipeline import Pipeline
    from sklearn.utils._param_validation import InvalidParameterError

    pipeline = Pipeline([("preprocess", preprocessor), ("model", estimator)])
    hooks.check_stop()
    try:
        pipeline.fit(x_train, y_train)
    except InvalidParameterError as exc:
        raise _param_error(exc) from exc
    hooks.check_stop()
    # Gradient boosting keeps its per-stage training loss: show it as a learning curve.
    for step, loss in enumerate(getattr(estimator, "train_score_", [])):
        hooks.metric("train_loss", step, loss)
    return {"pipeline": pipeline}


# --------------------------------------------------------------------------------------------- xgboost

_XGB_RENAMES = {"learning_rate": "eta", "reg_lambda": "lambda", "reg_alpha": "alpha"}


def _xgb_params(params: dict[str, Any], task: str, n_classes: int, seed: int) -> dict[str, Any]:
    booster_params = {_XGB_RENAMES.get(k, k): v for k, v in params.items() if k != "n_estimators"}
    booster_params["seed"] = seed
    if task == "regression":
        booster_params.update(objective="reg:squarederror", eval_metric="rmse")
    elif n_classes == 2:
        booster_params.update(objective="binary:logistic", eval_metric="logloss")
    else:
        booster_params.update(objective="multi:softprob", num_class=n_classes, eval_metric="mlogloss")
    return booster_params


def fit_xgboost(
    params: dict[str, Any],
    task: str,
    n_classes: int,
    preprocessor: Any,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_eval: pd.DataFrame | None,
    y_eval: np.ndarray | None,
    seed: int,
    hooks: Hooks,
) -> dict[str, Any]:
    """Boost round by round, reporting train/eval metrics per round; y is class indices for classification."""
    import xgboost as xgb

    n_rounds = params["n_estimators"]
    if isinstance(n_rounds, bool) or not isinstance(n_rounds, int) or n_rounds < 1:
        raise ConfigError("params.n_estimators", f"must be a positive integer, got {n_rounds!r}")
    hooks.check_stop()
    matrix = preprocessor.fit_transform(x_train)
    dtrain = xgb.DMatrix(matrix, label=y_train)
    evals = [(dtrain, "train")]
    if x_eval is not None:
        evals.append((xgb.DMatrix(preprocessor.transform(x_eval), label=y_eval), "test"))

    class Monitor(xgb.callback.TrainingCallback):
        """Emits per-round metrics and stops the loop for cancellation or pruning (raised after train())."""

        def __init__(self) -> None:
            super().__init__()
            self.stop_reason: Exception | None = None

        def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
            for data_name, by_metric in evals_log.items():
                for metric_name, values in by_metric.items():
                    hooks.metric(f"{data_name}_{metric_name}", epoch, values[-1])
            # Raising inside xgboost's C++ callback loop would lose the exception type; stop, then raise.
            try:
                hooks.check_stop()
                last = evals_log[evals[-1][1]]
                hooks.report(next(iter(last.values()))[-1], epoch)
            except Exception as exc:  # TrainingCancelled or optuna.TrialPruned
                self.stop_reason = exc
                return True
            return False

    monitor = Monitor()
    try:
        booster = xgb.train(
            _xgb_params(params, task, n_classes, seed),
            dtrain,
            num_boost_round=n_rounds,
            evals=evals,
            verbose_eval=False,
            callbacks=[monitor],
        )
    except xgb.core.XGBoostError as exc:
        raise _param_error(exc) from exc
    if monitor.stop_reason is not None:
        raise monitor.stop_reason
    hooks.check_stop()
    return {"preprocessor": preprocessor, "booster": booster}


# --------------------------------------------------------------------------------------------- pytorch


def fit_torch(
    params: dict[str, Any],
    task: str,
    n_classes: int,
    preprocessor: Any,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    seed: int,
    hooks: Hooks,
) -> dict[str, Any]:
    """Mini-batch Adam with early stopping on a validation split carved from the training data.

    Deterministic on CPU: numpy, random and torch are seeded inside a forked torch RNG (the caller's
    global torch RNG state is left untouched), and batches are shuffled with a seeded numpy generator.
    """
    import torch
    from sklearn.model_selection import train_test_split

    from serving.mlp import TabularMLP, architecture

    hooks.check_stop()
    val_fraction = float(params["val_fraction"])
    if not 0 < val_fraction < 0.5:
        raise ConfigError("params.val_fraction", "must be between 0 and 0.5")
    stratify = y_train if task == "classification" and np.bincount(y_train).min() >= 2 else None
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=val_fraction, random_state=seed, stratify=stratify
    )
    features = np.ascontiguousarray(preprocessor.fit_transform(x_fit), dtype=np.float32)
    val_features = np.ascontiguousarray(preprocessor.transform(x_val), dtype=np.float32)
    if task == "classification":
        targets, val_targets = y_fit.astype(np.int64), y_val.astype(np.int64)
        mean, std = 0.0, 1.0
    else:
        # Standardised targets train faster; the bundle keeps mean/std to undo it at predict time.
        mean, std = float(np.mean(y_fit)), float(np.std(y_fit)) or 1.0
        targets = ((y_fit - mean) / std).astype(np.float32)
        val_targets = ((y_val - mean) / std).astype(np.float32)
    output_dim = n_classes if task == "classification" else 1
    arch = architecture(
        input_dim=features.shape[1],
        hidden=params["hidden"],
        output_dim=output_dim,
        dropout=params["dropout"],
        target_mean=mean,
        target_std=std,
    )
    epochs, batch_size, patience = int(params["epochs"]), int(params["batch_size"]), int(params["patience"])
    rng = np.random.default_rng(seed)
    random.seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TabularMLP(arch["input_dim"], arch["hidden"], arch["output_dim"], arch["dropout"])
        optimizer = torch.optim.Adam(model.parameters(), lr=float(params["lr"]), weight_decay=params["weight_decay"])
        loss_fn: Any = torch.nn.CrossEntropyLoss() if task == "classification" else torch.nn.MSELoss()
        x_all, y_all = torch.from_numpy(features), torch.from_numpy(targets)
        x_v, y_v = torch.from_numpy(val_features), torch.from_numpy(val_targets)
        if task == "regression":
            y_all, y_v = y_all.unsqueeze(1), y_v.unsqueeze(1)
        best_loss, best_state, best_epoch, waited = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
        for epoch in range(epochs):
            hooks.check_stop()
            model.train()
            order = torch.from_numpy(rng.permutation(len(x_all)))
            total = 0.0
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(x_all[index]), y_all[index])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
            model.eval()
            with torch.no_grad():
                output = model(x_v)
                val_loss = float(loss_fn(output, y_v))
            hooks.metric("train_loss", epoch, total / len(order))
            hooks.metric("val_loss", epoch, val_loss)
            if task == "classification":
                hooks.metric("val_accuracy", epoch, float((output.argmax(dim=1) == y_v).float().mean()))
            else:
                hooks.metric("val_rmse", epoch, float(torch.sqrt(torch.mean((output - y_v) ** 2))) * std)
            hooks.report(val_loss, epoch)
            if val_loss < best_loss - 1e-7:
                best_loss, best_state, best_epoch, waited = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                waited += 1
                if waited >= patience:
                    hooks.info(f"early stopping at epoch {epoch}: no improvement since epoch {best_epoch}")
                    break
        model.load_state_dict(best_state)
    model.eval()
    hooks.check_stop()
    return {"preprocessor": preprocessor, "torch_model": model, "torch_arch": arch}
