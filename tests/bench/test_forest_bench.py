"""Compiled tree ensembles (`serving.forest`): finding the leaves through bit tables against the level walk.

Run: `pytest -p no:django --confcutdir=tests/bench tests/bench/test_forest_bench.py -s`, or as a script:
`OMP_NUM_THREADS=1 python tests/bench/test_forest_bench.py`. Prints the median `predict` time (over REPEATS
means of CALLS calls, both ways interleaved in the same run) for each batch size, with the library's own
predict alongside: XGBoost 200 trees of depth 6 on 10 features (the serving benchmark's booster), and
scikit-learn's gradient boosting, 100 stages of depth 3.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serving.forest import TreeEnsemble, compile_booster, compile_trees  # noqa: E402

pytestmark = pytest.mark.bench

FEATURES = 10
BATCHES = (1, 8, 32)
REPEATS = 15
CALLS = 200


def _data(rows: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES))
    return x, (x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3] > 0).astype(int)


def _mean_us(call: Callable[[np.ndarray], object], x: np.ndarray) -> float:
    started = time.perf_counter()
    for _ in range(CALLS):
        call(x)
    return (time.perf_counter() - started) / CALLS * 1e6


def _compare(name: str, trees: TreeEnsemble, library: Callable[[np.ndarray], object], x: np.ndarray) -> list[str]:
    assert trees.leaf_bits is not None, f"{name}: no bit tables"
    bits_max_rows = trees.bits_max_rows
    lines = [f"{name}: {trees.n_trees} trees, bit tables {trees.leaf_bits.nbytes / 1e6:.2f} MB"]
    for rows in BATCHES:
        batch = x[:rows]
        prepared = trees.prepare(batch)
        times: dict[str, list[float]] = {"bits": [], "walk": [], "library": []}
        for _ in range(REPEATS):
            trees.bits_max_rows = bits_max_rows
            times["bits"].append(_mean_us(trees.predict, prepared))
            trees.bits_max_rows = 0  # the walk
            times["walk"].append(_mean_us(trees.predict, prepared))
            times["library"].append(_mean_us(library, batch))
        trees.bits_max_rows = bits_max_rows
        bits, walk, own = (statistics.median(times[key]) for key in ("bits", "walk", "library"))
        lines.append(f"  {rows:>3} rows: bits {bits:7.1f} us   walk {walk:7.1f} us   library {own:8.1f} us")
    return lines


def run() -> list[str]:
    import xgboost as xgb
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = _data()
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 6, "nthread": 1}, xgb.DMatrix(x, label=y), num_boost_round=200
    )
    trees = compile_booster(booster)
    assert trees is not None
    lines = _compare("XGBoost depth 6", trees, lambda rows: booster.inplace_predict(rows), x)
    boosting = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0).fit(x[:2000], y[:2000])
    compiled = compile_trees(boosting)
    assert compiled is not None
    return lines + _compare("sklearn GradientBoosting depth 3", compiled, boosting.predict_proba, x)


def test_bit_tables_against_the_walk() -> None:
    print("\n" + "\n".join(run()))


if __name__ == "__main__":
    print("\n".join(run()))
