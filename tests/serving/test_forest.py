"""Compiled tree ensembles (`serving.forest`) must predict what scikit-learn predicts, or not be used."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeRegressor

import serving.forest
import serving.loader
from serving.app import new_request_id
from serving.bundle import save_bundle
from serving.forest import FOREST_MAX_PAIRS, TreeEnsemble, compile_trees
from serving.loader import TREE_TOLERANCE, Predictor, load_predictor
from serving.signature import infer_signature
from worker.training.trainer import TrainConfig, train

CLASSIFIERS = {
    "random_forest": lambda: RandomForestClassifier(n_estimators=25, random_state=0),
    "extra_trees": lambda: ExtraTreesClassifier(n_estimators=25, random_state=0),
    "gradient_boosting": lambda: GradientBoostingClassifier(n_estimators=25, random_state=0),
    "decision_tree": lambda: DecisionTreeClassifier(random_state=0),
}
REGRESSORS = {
    "random_forest": lambda: RandomForestRegressor(n_estimators=25, random_state=0),
    "extra_trees": lambda: ExtraTreesRegressor(n_estimators=25, random_state=0),
    "gradient_boosting": lambda: GradientBoostingRegressor(n_estimators=25, random_state=0),
    "decision_tree": lambda: DecisionTreeRegressor(random_state=0),
}


def _compiled(estimator: Any) -> TreeEnsemble:
    trees = compile_trees(estimator)
    assert trees is not None, f"{type(estimator).__name__} did not compile"
    return trees


def _assert_like_sklearn(estimator: Any, x: np.ndarray) -> None:
    """Compiled predictions equal sklearn's on all of `x` and on its first row alone."""
    trees = _compiled(estimator)
    for rows in (x, x[:1]):
        prepared = trees.prepare(rows)
        assert prepared is not None
        if trees.classifier:
            np.testing.assert_array_equal(trees.predict(prepared), estimator.predict(rows))
            np.testing.assert_allclose(
                trees.predict_proba(prepared), estimator.predict_proba(rows), rtol=0, atol=TREE_TOLERANCE
            )
        else:
            np.testing.assert_allclose(
                trees.predict(prepared), estimator.predict(rows), rtol=TREE_TOLERANCE, atol=TREE_TOLERANCE
            )


def _string_labels(y: np.ndarray) -> np.ndarray:
    return np.array(["class-" + "abcdefghij"[label] for label in y], dtype=object)


@pytest.mark.parametrize("name", list(CLASSIFIERS))
@pytest.mark.parametrize(
    ("loader", "labels"),
    [(load_iris, "int"), (load_iris, "str"), (load_wine, "int"), (load_breast_cancer, "int")]
    + [(load_breast_cancer, "str")],
)
def test_classifiers_equal_sklearn(name: str, loader: Any, labels: str) -> None:
    x, y = loader(return_X_y=True)
    estimator = CLASSIFIERS[name]().fit(x, _string_labels(y) if labels == "str" else y)
    _assert_like_sklearn(estimator, x)


@pytest.mark.parametrize("name", list(REGRESSORS))
def test_regressors_equal_sklearn(name: str) -> None:
    x, y = load_diabetes(return_X_y=True)
    _assert_like_sklearn(REGRESSORS[name]().fit(x, y), x)


@pytest.mark.parametrize(
    "estimator",
    [
        GradientBoostingClassifier(n_estimators=20, loss="exponential", random_state=0),
        GradientBoostingClassifier(n_estimators=20, init="zero", subsample=0.7, max_depth=5, random_state=0),
        RandomForestClassifier(n_estimators=20, class_weight="balanced", max_depth=4, random_state=0),
    ],
    ids=["gbm-exponential", "gbm-zero-init-subsample", "rf-balanced"],
)
def test_binary_variants_equal_sklearn(estimator: Any) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    _assert_like_sklearn(estimator.fit(x, y), x)


@pytest.mark.parametrize("loss", ["squared_error", "absolute_error", "huber", "quantile"])
def test_boosting_regression_losses_equal_sklearn(loss: str) -> None:
    x, y = load_diabetes(return_X_y=True)
    _assert_like_sklearn(GradientBoostingRegressor(n_estimators=20, loss=loss, random_state=0).fit(x, y), x)


@pytest.mark.parametrize(
    "estimator",
    [
        RandomForestClassifier(n_estimators=40, random_state=0),
        RandomForestRegressor(n_estimators=40, random_state=0),
        GradientBoostingClassifier(n_estimators=40, random_state=0),
        GradientBoostingRegressor(n_estimators=40, random_state=0),
    ],
    ids=["rf-classifier", "rf-regressor", "gbm-classifier", "gbm-regressor"],
)
def test_trees_are_added_in_sklearns_order(estimator: Any) -> None:
    # Same additions in the same order give the same bits, so ties between classes break as in sklearn;
    # the loader only needs 1e-9, this pins the order (one row and batches take different numpy paths).
    x, y = load_breast_cancer(return_X_y=True)
    estimator.fit(x, y if hasattr(estimator, "predict_proba") else x[:, 0])
    trees = _compiled(estimator)
    for rows in (x[:1], x[:2], x):
        prepared = trees.prepare(rows)
        np.testing.assert_array_equal(trees.predict(prepared), estimator.predict(rows))
        if trees.classifier:
            np.testing.assert_array_equal(trees.predict_proba(prepared), estimator.predict_proba(rows))


def _random_data(seed: int, missing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 6))
    labels = np.array(["low", "mid", "high"])[(x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)]
    values = 3 * x[:, 0] - x[:, 3] + rng.normal(scale=0.1, size=len(x))
    x[rng.random(x.shape) < missing] = np.nan
    return x, labels, values


@pytest.mark.parametrize("trained_with_nan", [True, False])
@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomForestClassifier(n_estimators=20, random_state=0),
        lambda: ExtraTreesClassifier(n_estimators=20, random_state=0),
        lambda: DecisionTreeClassifier(random_state=0),
        lambda: RandomForestRegressor(n_estimators=20, random_state=0),
        lambda: ExtraTreesRegressor(n_estimators=20, random_state=0),
        lambda: ExtraTreeRegressor(random_state=0),
    ],
)
def test_missing_values_go_where_sklearn_sends_them(make: Any, trained_with_nan: bool) -> None:
    x, labels, values = _random_data(0, 0.2 if trained_with_nan else 0.0)
    estimator = make()
    estimator.fit(x, labels if hasattr(estimator, "predict_proba") else values)
    serve, _, _ = _random_data(1, 0.3)
    assert np.isnan(serve).any()
    _assert_like_sklearn(estimator, serve)


def test_input_sklearn_refuses_is_left_to_sklearn() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    boosting = _compiled(GradientBoostingClassifier(n_estimators=5, random_state=0).fit(x, y))
    forest = _compiled(RandomForestClassifier(n_estimators=5, random_state=0).fit(x, y))
    with_nan, with_inf, too_large = x[:3].copy(), x[:3].copy(), x[:3].copy()
    with_nan[1, 2], with_inf[0, 0], too_large[2, 1] = np.nan, np.inf, 1e39  # 1e39 is infinite as float32
    assert boosting.prepare(with_nan) is None  # gradient boosting refuses NaN
    assert forest.prepare(with_nan) is not None
    for trees in (boosting, forest):
        assert trees.prepare(with_inf) is None and trees.prepare(too_large) is None
        assert trees.prepare(x[:, :-1]) is None  # wrong width: sklearn names the problem


def test_unsupported_estimators_do_not_compile() -> None:
    x, y = load_iris(return_X_y=True)
    assert compile_trees(LogisticRegression(max_iter=500).fit(x, y)) is None
    assert compile_trees(HistGradientBoostingClassifier(max_iter=5).fit(x, y)) is None
    custom_init = GradientBoostingClassifier(n_estimators=5, init=LogisticRegression(max_iter=500)).fit(x, y)
    assert compile_trees(custom_init) is None
    two_outputs = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, np.column_stack([y, y]))
    assert compile_trees(two_outputs) is None


# ------------------------------------------------------------------------------------------- through the loader


def _without_compiled_trees(monkeypatch: pytest.MonkeyPatch, path: str | Path) -> Predictor:
    with monkeypatch.context() as patched:
        patched.setattr(serving.loader, "compile_trees", lambda estimator: None)
        reference = load_predictor(path)
    assert reference.compiled_model is None
    return reference


@pytest.fixture(scope="module")
def iris_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = load_iris(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame["size"] = np.where(frame["sepal length (cm)"] > 5.8, "big", "small")
    frame["species"] = data.target_names[data.target]
    shuffled = frame.sample(frac=1.0, random_state=0)
    return shuffled.iloc[:100], shuffled.iloc[100:]


@pytest.fixture(scope="module")
def diabetes_frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = load_diabetes(as_frame=True).frame
    return frame.iloc[:300], frame.iloc[300:]


@pytest.mark.parametrize("algorithm", ["random_forest", "gradient_boosting"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_trained_bundles_use_the_compiled_trees(
    algorithm: str,
    task: str,
    iris_frame: tuple,
    diabetes_frame: tuple,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (train_df, test_df), target = (iris_frame, "species") if task == "classification" else (diabetes_frame, "target")
    config = TrainConfig.from_dict({"algorithm": algorithm, "target": target, "params": {"n_estimators": 30}})
    result = train(config, train_df, test_df, output_dir=tmp_path)
    predictor = load_predictor(result.bundle_path, expected_sha256=result.bundle_sha256)
    expected_model = ("RandomForest" if algorithm == "random_forest" else "GradientBoosting") + (
        "Classifier" if task == "classification" else "Regressor"
    )
    assert predictor.compiled_model == expected_model
    reference = _without_compiled_trees(monkeypatch, result.bundle_path)
    features = test_df.drop(columns=target)
    for rows in (features, features.head(1)):
        if task == "classification":
            np.testing.assert_array_equal(predictor.predict(rows), reference.predict(rows))
            np.testing.assert_allclose(
                predictor.predict_proba(rows), reference.predict_proba(rows), rtol=0, atol=TREE_TOLERANCE
            )
        else:
            np.testing.assert_allclose(
                predictor.predict(rows), reference.predict(rows), rtol=TREE_TOLERANCE, atol=TREE_TOLERANCE
            )


def _bare_forest_bundle(path: Path, estimator: Any) -> tuple[Path, pd.DataFrame]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(400, 5)), columns=[f"f{i}" for i in range(5)])
    frame.loc[::9, "f2"] = np.nan
    labels = np.where(frame["f0"] + frame["f1"] > 0, "yes", "no")
    estimator.fit(frame, labels)
    signature = infer_signature(frame, target_kind="classification", classes=["no", "yes"])
    save_bundle(path, flavor="sklearn", task="classification", signature=signature, input_example=frame.head(3),
                classes=["no", "yes"], params=None, pipeline=estimator)  # fmt: skip
    return path, frame


def test_a_bare_forest_is_compiled_and_serves_missing_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, frame = _bare_forest_bundle(tmp_path / "forest.zip", RandomForestClassifier(40, random_state=0))
    predictor = load_predictor(path)
    assert predictor.compiled_model == "RandomForestClassifier"
    reference = _without_compiled_trees(monkeypatch, path)
    rows = frame.head(50)
    assert rows["f2"].isna().any()
    np.testing.assert_array_equal(predictor.predict(rows), reference.predict(rows))
    expected = reference.predict_proba(rows)
    np.testing.assert_allclose(predictor.predict_proba(rows), expected, rtol=0, atol=TREE_TOLERANCE)
    # Infinity is sklearn's to refuse, with its own error.
    with pytest.raises(ValueError, match="infinity"):
        predictor.predict(rows.head(2).assign(f0=np.inf))
    # A batch too large for the compiled walk goes to sklearn and still gives its answer.
    many = pd.concat([frame] * 8, ignore_index=True)
    assert len(many) * 40 > FOREST_MAX_PAIRS
    np.testing.assert_array_equal(predictor.predict(many), reference.predict(many))


def test_unsupported_models_and_mismatches_fall_back_to_sklearn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _bare_forest_bundle(tmp_path / "hist.zip", HistGradientBoostingClassifier(max_iter=10))
    assert load_predictor(path).compiled_model is None
    # Trees that do not reproduce the bundled model (here: another forest's) are never used.
    forest = RandomForestClassifier(10, random_state=0)
    path, frame = _bare_forest_bundle(tmp_path / "forest.zip", forest)
    impostor = RandomForestClassifier(10, random_state=1).fit(frame.fillna(0.0), frame["f0"] > 0)
    with monkeypatch.context() as patched:
        patched.setattr(serving.loader, "compile_trees", lambda estimator: compile_trees(impostor))
        predictor = load_predictor(path)
    assert predictor.compiled_model is None
    np.testing.assert_array_equal(predictor.predict(frame.head(3)), forest.predict(frame.head(3)))


# ------------------------------------------------------------------------------------------- the request path


def test_generated_request_ids_are_version_4_uuids() -> None:
    # The server's cheaper stand-in for str(uuid.uuid4()) (see serving.app.new_request_id).
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert str(parsed) == request_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert {request_id[19] for request_id in ids} == set("89ab")


# ------------------------------------------------------------------------------------------- leaf bit tables


def _ten_features(seed: int, rows: int = 800, missing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 10))
    x[:, 3] = rng.integers(-3, 4, size=rows)  # many values exactly on split thresholds
    y = (x[:, 0] + x[:, 1] * x[:, 2] - 0.5 * x[:, 3] > 0).astype(int)
    x[rng.random(x.shape) < missing] = np.nan
    return x, y


def _assert_bits_equal_walk_and_sklearn(estimator: Any, probes: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leaves from the bit tables equal the walk's, and predictions sklearn's, without the walk being used."""
    trees = _compiled(estimator)
    assert trees.leaf_bits is not None and trees.bits_max_rows >= trees.max_rows
    batches = [probes, probes[: trees.max_rows], probes[:8], probes[:1], probes[-1:]]
    walked = [trees._walk(trees.prepare(rows)) for rows in batches]

    def no_walk(x: np.ndarray) -> np.ndarray:
        raise AssertionError("the walk was used")

    monkeypatch.setattr(trees, "_walk", no_walk)
    for rows, expected in zip(batches, walked, strict=True):
        prepared = trees.prepare(rows)
        np.testing.assert_array_equal(trees.leaf_bits.leaves(prepared), expected)
        if len(rows) <= trees.max_rows:
            np.testing.assert_array_equal(trees.predict(prepared), estimator.predict(rows))
            if trees.classifier:
                np.testing.assert_array_equal(trees.predict_proba(prepared), estimator.predict_proba(rows))


@pytest.mark.parametrize(
    "estimator",
    [
        GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0),
        GradientBoostingRegressor(n_estimators=60, max_depth=5, random_state=0),
        GradientBoostingClassifier(n_estimators=30, max_depth=2, learning_rate=0.5, random_state=0),
    ],
    ids=["gbm-depth-3", "gbm-regressor-depth-5", "gbm-stumps-two-levels"],
)
def test_shallow_boosting_finds_leaves_through_bit_tables(estimator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _ten_features(0)
    estimator.fit(x, y if hasattr(estimator, "predict_proba") else x[:, 0] - x[:, 3])
    trees = _compiled(estimator)
    # On the thresholds, one float32 step either side, around them; -0.0 beside 0.0.
    probes = trees.probe_rows(600, seed=2)
    probes[::5, 3] = -0.0
    probes[1::5, 3] = 0.0
    _assert_bits_equal_walk_and_sklearn(estimator, probes, monkeypatch)


@pytest.mark.parametrize(
    "make",
    [lambda: DecisionTreeClassifier(max_depth=5, random_state=0), lambda: RandomForestRegressor(20, max_depth=4)],
    ids=["tree-depth-5", "forest-depth-4"],
)
def test_shallow_trees_send_missing_values_through_bit_tables(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _ten_features(0, missing=0.15)
    # Missing values in f9 mean class 1: sklearn splits missing from present there, at an infinite threshold.
    y[np.isnan(x[:, 9])] = 1
    estimator = make()
    estimator.fit(x, y if hasattr(estimator, "predict_proba") else y + np.nan_to_num(x[:, 1]))
    trees = _compiled(estimator)
    probes = trees.probe_rows(600, seed=2)
    probes[::9] = np.nan
    probes[::13, 9] = -np.nan
    if isinstance(estimator, DecisionTreeClassifier):
        assert np.isinf(estimator.tree_.threshold).any()
    _assert_bits_equal_walk_and_sklearn(estimator, probes, monkeypatch)


def test_a_threshold_at_zero_parts_minus_zero_and_tiny_values_like_sklearn() -> None:
    x = np.array([[-1.0], [1.0], [-1.0], [1.0]])
    tree = DecisionTreeRegressor().fit(x, [0.0, 1.0, 0.0, 1.0])
    assert tree.tree_.threshold[0] == 0.0
    tiny = float(np.nextafter(np.float32(0), np.float32(1)))
    probes = np.array([[-0.0], [0.0], [tiny], [-tiny], [1e-39], [-1e-39], [3e38], [-3e38]])
    trees = _compiled(tree)
    prepared = trees.prepare(probes)
    assert trees.leaf_bits is not None
    np.testing.assert_array_equal(trees.leaf_bits.leaves(prepared), trees._walk(prepared))
    np.testing.assert_array_equal(trees.predict(prepared), tree.predict(probes))


def test_deep_or_oversized_ensembles_keep_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _ten_features(0)
    assert _compiled(RandomForestClassifier(10, random_state=0).fit(x, y)).leaf_bits is None
    boosting = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(x, y)
    assert _compiled(boosting).leaf_bits is not None
    with monkeypatch.context() as patched:
        patched.setattr(serving.forest, "BITS_MAX_BYTES", 1000)
        trees = _compiled(boosting)
    assert trees.leaf_bits is None and trees.bits_max_rows == 0
    np.testing.assert_array_equal(trees.predict_proba(trees.prepare(x[:5])), boosting.predict_proba(x[:5]))
    # Many features for few levels: the walk serves all but the smallest batches.
    wide = np.hstack([x] * 8)
    many = _compiled(GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0).fit(wide, y))
    assert many.leaf_bits is not None and many.bits_max_rows < many.max_rows
