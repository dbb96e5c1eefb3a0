"""Compiled XGBoost boosters (`serving.forest.compile_booster`) must return XGBoost's numbers, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

import serving.loader
from serving.bundle import save_bundle
from serving.forest import TreeEnsemble, compile_booster
from serving.loader import Predictor, load_predictor
from serving.signature import infer_signature

FEATURES = 6


def _data(seed: int, rows: int = 600, missing: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    # Integer-valued columns put many inputs exactly on split conditions.
    x[:, 3] = rng.integers(-3, 4, size=rows)
    signal = x[:, 0] + x[:, 1] * x[:, 2] - 0.5 * x[:, 3]
    x[rng.random(x.shape) < missing] = np.nan
    return x, signal


def _train(params: dict, label: str = "binary", rounds: int = 30, seed: int = 0) -> xgb.Booster:
    x, signal = _data(seed)
    y = {
        "binary": (signal > 0).astype(int),
        "multi": np.digitize(signal, [-0.5, 0.5]),
        "value": signal + 0.1 * np.nan_to_num(x[:, 4]),
    }[label]
    return xgb.train({"nthread": 1, **params}, xgb.DMatrix(x, label=y), num_boost_round=rounds)


def _compiled(booster: xgb.Booster) -> TreeEnsemble:
    trees = compile_booster(booster)
    assert trees is not None, "the booster did not compile"
    return trees


def _assert_like_xgboost(booster: xgb.Booster, x: np.ndarray, output: str = "margin") -> None:
    trees = _compiled(booster)
    prepared = trees.prepare(x)
    assert prepared is not None
    np.testing.assert_array_equal(trees.predict(prepared), booster.inplace_predict(x, predict_type=output))


BOOSTERS = {
    "binary": ({"objective": "binary:logistic", "max_depth": 6}, "binary"),
    "binary_deep": ({"objective": "binary:logistic", "max_depth": 12, "eta": 0.3}, "binary"),
    "binary_lossguide": ({"objective": "binary:logistic", "grow_policy": "lossguide", "max_leaves": 20}, "binary"),
    "binary_base_score": ({"objective": "binary:logistic", "base_score": 0.3}, "binary"),
    "logitraw": ({"objective": "binary:logitraw"}, "binary"),
    "parallel_trees": ({"objective": "binary:logistic", "num_parallel_tree": 3, "subsample": 0.8}, "binary"),
    "exact": ({"objective": "binary:logistic", "tree_method": "exact"}, "binary"),
    "softprob": ({"objective": "multi:softprob", "num_class": 3}, "multi"),
    "softmax": ({"objective": "multi:softmax", "num_class": 3, "num_parallel_tree": 2}, "multi"),
    "squared_error": ({"objective": "reg:squarederror"}, "value"),
    "absolute_error": ({"objective": "reg:absoluteerror"}, "value"),
}


@pytest.mark.parametrize("name", list(BOOSTERS))
def test_margins_equal_xgboost_on_random_rows_with_missing_values(name: str) -> None:
    params, label = BOOSTERS[name]
    booster = _train(params, label)
    x, _ = _data(seed=7, rows=2000, missing=0.15)
    for rows in (x, x[:1], x[1:3], x[3:10], x[10:43], x[43:107]):
        _assert_like_xgboost(booster, rows)


@pytest.mark.parametrize("name", ["binary", "softprob", "squared_error"])
def test_margins_equal_xgboost_on_and_beside_split_conditions(name: str) -> None:
    params, label = BOOSTERS[name]
    booster = _train(params, label)
    trees = _compiled(booster)
    # Values on a split condition (XGBoost goes right when `x >= split`), one float32 step either side of
    # it, and around it; NaN one time in ten.
    probes = trees.probe_rows(3000, seed=3)
    for rows in (probes, probes[:1], probes[-5:], trees.perturb(probes[:50], seed=4)):
        _assert_like_xgboost(booster, rows)


def test_values_without_an_output_transform_equal_xgboosts_predictions() -> None:
    booster = _train({"objective": "reg:squarederror"}, "value")
    x, _ = _data(seed=8, rows=300)
    _assert_like_xgboost(booster, x, output="value")


def test_unsupported_boosters_do_not_compile() -> None:
    assert compile_booster(_train({"objective": "binary:logistic", "booster": "dart"}, rounds=5)) is None
    assert compile_booster(_train({"objective": "binary:logistic", "booster": "gblinear"}, rounds=5)) is None
    x, signal = _data(seed=0, missing=0.0)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
    frame["kind"] = pd.Categorical(np.where(signal > 0, "a", "b"))
    categorical = xgb.train(
        {"objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(frame, label=(signal > 0).astype(int), enable_categorical=True),
        num_boost_round=5,
    )
    assert compile_booster(categorical) is None
    two_targets = xgb.train(
        {"objective": "reg:squarederror", "multi_strategy": "multi_output_tree", "nthread": 1},
        xgb.DMatrix(x, label=np.column_stack([signal, -signal])),
        num_boost_round=5,
    )
    assert compile_booster(two_targets) is None


# ------------------------------------------------------------------------------------------- through the loader


def _bundle(path: Path, booster: xgb.Booster, task: str) -> tuple[Path, pd.DataFrame]:
    x, _ = _data(seed=5, rows=200)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
    classes = ["no", "yes"] if task == "classification" else None
    signature = infer_signature(frame, target_kind=task, classes=classes)
    save_bundle(path, flavor="xgboost", task=task, signature=signature, input_example=frame.head(3),
                classes=classes, params=None, booster=booster)  # fmt: skip
    return path, frame


def _without_compiled_booster(monkeypatch: pytest.MonkeyPatch, path: Path) -> Predictor:
    with monkeypatch.context() as patched:
        patched.setattr(serving.loader, "compile_booster", lambda booster: None)
        reference = load_predictor(path)
    assert reference.compiled_model is None
    return reference


def test_a_classifier_bundle_serves_compiled_trees_with_xgboosts_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booster = _train({"objective": "binary:logistic", "max_depth": 6}, rounds=60)
    path, frame = _bundle(tmp_path / "xgb.zip", booster, "classification")
    predictor = load_predictor(path)
    assert predictor.compiled_model == "Booster"
    reference = _without_compiled_booster(monkeypatch, path)
    assert frame.isna().any().any()
    for rows in (frame.head(1), frame.head(2), frame.head(32)):
        np.testing.assert_array_equal(predictor.predict_proba(rows), reference.predict_proba(rows))
        np.testing.assert_array_equal(predictor.predict(rows), reference.predict(rows))
    # Infinity and batches beyond the compiled walk's size go to XGBoost, with its answers.
    infinite = frame.head(3).assign(f0=[np.inf, -np.inf, 1.0])
    np.testing.assert_array_equal(predictor.predict_proba(infinite), reference.predict_proba(infinite))
    many = pd.concat([frame] * 3, ignore_index=True)
    assert len(many) > _compiled(booster).max_rows
    np.testing.assert_array_equal(predictor.predict_proba(many), reference.predict_proba(many))


def test_regression_with_an_output_transform_is_left_to_xgboost(tmp_path: Path) -> None:
    # reg:logistic's value is the sigmoid of the margin, which the compiled trees do not compute.
    x, signal = _data(seed=0)
    booster = xgb.train(
        {"objective": "reg:logistic", "nthread": 1}, xgb.DMatrix(x, label=(signal > 0).astype(float)), 10
    )
    path, frame = _bundle(tmp_path / "logistic.zip", booster, "regression")
    predictor = load_predictor(path)
    assert predictor.compiled_model is None
    expected = booster.inplace_predict(frame.head(5).to_numpy())
    np.testing.assert_array_equal(predictor.predict(frame.head(5)), expected.astype(np.float64))
    path, frame = _bundle(tmp_path / "squared.zip", _train({"objective": "reg:squarederror"}, "value"), "regression")
    assert load_predictor(path).compiled_model == "Booster"


def test_compiled_trees_that_differ_from_the_booster_are_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    booster = _train({"objective": "binary:logistic"}, rounds=10)
    impostor = _train({"objective": "binary:logistic"}, rounds=10, seed=1)
    path, frame = _bundle(tmp_path / "xgb.zip", booster, "classification")
    with monkeypatch.context() as patched:
        patched.setattr(serving.loader, "compile_booster", lambda _: compile_booster(impostor))
        predictor = load_predictor(path)
    assert predictor.compiled_model is None
    margin = booster.inplace_predict(frame.head(4).to_numpy(), predict_type="margin").astype(np.float64)
    np.testing.assert_array_equal(predictor.predict_proba(frame.head(4))[:, 1], 1.0 / (1.0 + np.exp(-margin)))


# ------------------------------------------------------------------------------------------- leaf bit tables


def _assert_bit_tables_serve(trees: TreeEnsemble, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch the compiled trees serve finds its leaves through the bit tables, never the walk."""
    assert trees.leaf_bits is not None and trees.bits_max_rows >= trees.max_rows

    def no_walk(x: np.ndarray) -> np.ndarray:
        raise AssertionError("the walk was used")

    monkeypatch.setattr(trees, "_walk", no_walk)


@pytest.mark.parametrize("name", ["binary", "binary_lossguide", "softprob", "squared_error"])
def test_shallow_boosters_find_leaves_through_bit_tables(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    params, label = BOOSTERS[name]
    booster = _train(params, label, rounds=60)
    trees = _compiled(booster)
    # On split conditions, one float32 step either side, around them, NaN (positive and negative), -0.0.
    probes = trees.probe_rows(1000, seed=5)
    probes[::7, 2] = -0.0
    probes[1::11, 4] = -np.nan
    walked = {len(rows): trees._walk(trees.prepare(rows)) for rows in (probes, probes[: trees.max_rows])}
    _assert_bit_tables_serve(trees, monkeypatch)
    for rows in (probes, probes[: trees.max_rows], probes[:8], probes[:1], probes[-1:]):
        prepared = trees.prepare(rows)
        leaves = trees.leaf_bits.leaves(prepared)
        assert leaves.shape == (trees.n_trees, len(rows))
        if len(rows) in walked:
            np.testing.assert_array_equal(leaves, walked[len(rows)])
        if len(rows) <= trees.max_rows:
            np.testing.assert_array_equal(trees.predict(prepared), booster.inplace_predict(rows, predict_type="margin"))


def test_the_benchmarks_booster_finds_leaves_through_bit_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    # 200 trees of depth 6 on 10 features, as tests/bench/test_serving_bench.py serves.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 10))
    label = (x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3] > 0).astype(int)
    params = {"objective": "binary:logistic", "max_depth": 6, "nthread": 1}
    booster = xgb.train(params, xgb.DMatrix(x, label=label), num_boost_round=200)
    trees = _compiled(booster)
    assert trees.leaf_bits is not None and trees.leaf_bits.nbytes < 4 << 20
    probes = trees.probe_rows(trees.max_rows, seed=1)
    _assert_bit_tables_serve(trees, monkeypatch)
    for rows in (probes, probes[:1], x[:32]):
        np.testing.assert_array_equal(
            trees.predict(trees.prepare(rows)), booster.inplace_predict(rows, predict_type="margin")
        )
