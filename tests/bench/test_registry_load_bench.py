"""Load time of registered models (sha256 verified, safe formats) against a plain pickle.load of the same model.

Run with `make bench` (or `pytest tests/bench/test_registry_load_bench.py -s`). Prints the median of N loads.
"""

from __future__ import annotations

import pickle
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_classification

from apps.registry import services
from serving.bundle import save_bundle
from serving.signature import infer_signature

pytestmark = [pytest.mark.bench, pytest.mark.django_db]

N_LOADS = 15


def _median_ms(load: Callable[[], object]) -> float:
    load()  # warm-up: imports and caches
    times = []
    for _ in range(N_LOADS):
        started = time.perf_counter()
        load()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _data() -> tuple:
    import pandas as pd

    x, y = make_classification(n_samples=2000, n_features=20, n_informative=10, random_state=0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(20)])
    labels = np.where(y == 1, "yes", "no")
    return frame, labels, infer_signature(frame, target_kind="classification", classes=["no", "yes"])


def _random_forest(path: Path) -> tuple[Path, object]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    frame, labels, signature = _data()
    pipeline = Pipeline([("model", RandomForestClassifier(n_estimators=100, random_state=0))]).fit(frame, labels)
    save_bundle(path, flavor="sklearn", task="classification", signature=signature, input_example=frame.head(2),
                classes=["no", "yes"], params={}, pipeline=pipeline)  # fmt: skip
    return path, pipeline


def _xgboost(path: Path) -> tuple[Path, object]:
    import xgboost as xgb

    frame, labels, signature = _data()
    matrix = xgb.DMatrix(frame.to_numpy(), label=(labels == "yes").astype(int))
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 6, "nthread": 1}, matrix, num_boost_round=200)
    save_bundle(path, flavor="xgboost", task="classification", signature=signature, input_example=frame.head(2),
                classes=["no", "yes"], params={}, booster=booster)  # fmt: skip
    return path, booster


def test_registry_load_vs_pickle(project, member, tmp_path: Path) -> None:
    rows = []
    for name, build in (("random forest (100 trees)", _random_forest), ("xgboost (200 rounds)", _xgboost)):
        bundle, model = build(tmp_path / f"{name.split()[0]}.zip")
        version = services.model_version_register(
            project=project, model_name=name.split()[0], bundle_path=bundle, actor=member
        )
        pickled = tmp_path / f"{name.split()[0]}.pkl"
        pickled.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))

        def load_pickle(path: Path = pickled) -> object:
            with open(path, "rb") as handle:
                return pickle.load(handle)  # the baseline: unsafe, unverified

        registry_ms = _median_ms(lambda v=version: services.model_version_load(version=v))
        pickle_ms = _median_ms(load_pickle)
        rows.append((name, version.size_bytes, registry_ms, pickle_ms))

    print(f"\nModel load, median of {N_LOADS} (registry: sha256 of the stored file + bundle members, safe formats)")
    print(f"{'model':<28}{'bundle KB':>10}{'registry ms':>14}{'pickle.load ms':>16}{'ratio':>8}")
    for name, size, registry_ms, pickle_ms in rows:
        print(f"{name:<28}{size / 1024:>10.0f}{registry_ms:>14.1f}{pickle_ms:>16.1f}{registry_ms / pickle_ms:>8.1f}")
    assert all(registry_ms > 0 for _, _, registry_ms, _ in rows)
