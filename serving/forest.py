"""Fitted scikit-learn tree ensembles compiled into flat numpy arrays, for low-latency serving.

scikit-learn predicts a forest tree by tree through joblib: ~5 ms for 100 trees even on one row, almost
all of it per-tree Python overhead. Here every node of every tree lives in a few flat arrays, and all
(tree, row) pairs walk down together, one vectorised step per tree level.

Ensembles of small trees (at most 64 leaves: XGBoost's default depth 6, shallow gradient boosting) find
their leaves through bit tables instead (`_LeafBits`, after QuickScorer): a binary search of each value among
its feature's thresholds picks a precomputed row of per-tree leaf bit masks, and the AND of a row's masks
over the features has its lowest set bit on the leaf. That is a few numpy calls over contiguous memory
whatever the depth, where the walk makes several random gathers per level (about half the time for 200
depth-6 trees on 10 features); with many features for few levels the walk stays cheaper, and keeps the call.

How the result matches scikit-learn 1.9:
- inputs are cast to float32, like `_validate_X_predict`, and compared `x <= threshold` in float64, like
  its C traversal; NaN goes where the node's `missing_go_to_left` says, for the estimators that accept
  NaN (trees and forests). Input sklearn would refuse (infinity, NaN for gradient boosting, a wrong
  width) is left to sklearn, so that it raises its own error;
- forests add the trees' leaf class proportions (or values) one tree after the other, from the first,
  then divide by the number of trees: the order `_accumulate_prediction` adds them in with one job;
- gradient boosting starts from the init estimator's raw prediction (a constant for the dummy "prior",
  mean and quantile estimators) and adds `learning_rate * leaf value` stage by stage, like
  `predict_stages`, then applies the loss's inverse link (expit, or sklearn's softmax step by step).

Anything else (multi-output, a user init estimator, subclasses) compiles to None and sklearn serves it;
the loader also checks the compiled predictions against sklearn's before using them.

XGBoost tree boosters (`compile_booster`) are walked the same way: XGBoost spends ~0.25 ms per predict
call, mostly outside its trees. How the margin matches XGBoost 3.2's CPU predictor bit for bit:
- inputs are float32 and a split sends `x >= split` right (compared here as `x >` the float32 below it);
  NaN is missing and takes the node's default direction;
- the base margin is XGBoost's own (a prediction over an empty range of rounds), and each tree's float32
  leaf value is added to it in float32, in tree order, per output group.
dart, gblinear, categorical splits and multi-target trees compile to None; the loader checks the result.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

# Drop finished (tree, row) pairs from the walk every this many levels: deep trees have a few long paths
# and many short ones, and compacting at every level costs more than it saves.
_COMPACT_EVERY = 6
# Above this many (tree, row) pairs sklearn's (or XGBoost's) per-row C loop is faster than numpy's
# per-level passes (measured on 10-feature data; the fixed per-call cost is ~5 ms for a sklearn forest,
# ~0.3 ms for sklearn's gradient boosting, ~0.25 ms for XGBoost, whose crossover is ~40 rows of 200
# depth-6 trees).
FOREST_MAX_PAIRS = 100_000
BOOSTING_MAX_PAIRS = 20_000
BOOSTER_MAX_PAIRS = 8_000
# Leaf bit tables (`_LeafBits`) serve ensembles whose trees have at most this many leaves, when the tables fit
# in this many bytes (~2.5 MB for 200 XGBoost trees of depth 6 on 10 features: its splits use ~1,500 distinct
# thresholds, on XGBoost's histogram bins).
BITS_MAX_LEAVES = 64
BITS_MAX_BYTES = 16 << 20
# Measured per-call costs (numpy 2.4, x86-64, one thread), to choose between the walk and the bit tables:
# the walk takes ~3 ns per (tree, row, level) after ~11 us + 1.4 us per level; the tables take
# ~0.3 + 0.11 * (mask bytes) ns per (tree, row, feature) after ~8 us (XGBoost boosters of 5 to 50 features,
# depth 3 to 6, 100 to 300 trees; where the two are close this errs towards the walk). The tables serve a call
# up to the row count where they stop being cheaper.
_WALK_PAIR_LEVEL_NS, _WALK_CALL_US, _WALK_LEVEL_US = 3.0, 11.0, 1.4
_BITS_PAIR_FEATURE_NS, _BITS_BYTE_NS, _BITS_CALL_US = 0.3, 0.11, 8.0
# Above this many bytes of masks a call, one gather for all features then an AND over them is slower than a
# gather and an AND per feature (measured between 0.3 and 0.6 MB).
_BITS_GATHER_BYTES = 384 << 10

Combine = Callable[[np.ndarray], np.ndarray]


class _ConstantTree:
    """A single leaf: how gradient boosting's constant init prediction joins the in-order sum."""

    node_count = 1
    max_depth = 0
    children_left = children_right = feature = np.array([-1], dtype=np.intp)
    threshold = np.array([0.0])
    missing_go_to_left = np.array([1], dtype=np.uint8)


def _sequential_sum(stacked: np.ndarray) -> np.ndarray:
    """The sum over axis 0, added strictly in order (stacked[0] + stacked[1] + ...), as sklearn adds trees.

    numpy reduces axis 0 of a (n, m >= 2) array one row after the other, but a single column as one
    contiguous run, which it adds pairwise (rounding differently): that case goes through accumulate,
    which is always in order (and slow on wide arrays, hence not used for everything).
    """
    if stacked[0].size < 2:
        return np.add.accumulate(stacked, axis=0)[-1]
    return np.add.reduce(stacked, axis=0)


def _order_keys(values: np.ndarray) -> np.ndarray:
    """int64 keys in the order of `values` (float64 holding float32 values), within +-2**34.

    A float's bits order like its value once a negative one's bits below the sign are flipped; the low 29
    bits of a float32 held as float64 are zero. -0.0 comes out as -1, between every negative key and 0.0.
    """
    bits = np.ascontiguousarray(values, dtype=np.float64).view(np.int64)
    return (bits ^ ((bits >> 63) & np.int64(2**63 - 1))) >> 29


class _LeafBits:
    """Every tree's leaf as a bit vector (QuickScorer), for trees of at most BITS_MAX_LEAVES leaves.

    A tree's leaves are numbered left to right. A split sending a row right rules out the leaves of its left
    subtree, and the row's leaf is the lowest numbered one that no split rules out. On one feature, the splits
    a value sends right (`value > threshold`) are those with the lowest thresholds: a table keeps, for each
    count of a feature's lowest distinct thresholds, the leaves those splits leave possible in each tree (one
    row per count, and one for a missing value, sent where each split's `nan_right` says). Finding every
    leaf is then a binary search per value, one gather of table rows, an AND across features and a lowest
    set bit per (row, tree): a few numpy calls over contiguous memory, where the walk makes several random
    gathers per level.

    One search covers all features, on int64 keys ordered by (feature, value): `x` holds float32 values, and
    for those `x > t` is `x > t32`, t32 the largest float32 not above the float64 threshold t.
    """

    def __init__(
        self,
        keys: np.ndarray,
        columns: np.ndarray | None,
        table: np.ndarray,
        nan_rows: np.ndarray,
        leaf_nodes: np.ndarray,
    ) -> None:
        self._keys = keys
        self._columns = columns  # the features some split reads, None when that is all of them
        self._table = table
        self.n_columns = len(nan_rows)
        self._feature_keys = np.arange(self.n_columns, dtype=np.int64) << 35
        self._row_shift = 2 * np.arange(self.n_columns, dtype=np.intp)
        self._nan_rows = nan_rows
        self._leaf_nodes = leaf_nodes.ravel()
        # v ^ (v - 1) sets the bits of v up to its lowest set bit j: j + 1 bits.
        self._leaf_base = np.arange(len(leaf_nodes), dtype=np.intp) * leaf_nodes.shape[1] - 1
        self.nbytes = table.nbytes

    @classmethod
    def build(cls, trees: list[Any], offsets: np.ndarray, ensemble: TreeEnsemble) -> _LeafBits | None:
        """The tables for `ensemble`, or None: a tree has too many leaves, no tree splits, or too many bytes."""
        widest = 0
        leaf_nodes, masks, split_nodes, split_trees = [], [], [], []
        for index, (tree, offset) in enumerate(zip(trees, offsets, strict=True)):
            left, right = tree.children_left.tolist(), tree.children_right.tolist()
            # Pre-order, left first, from the root (so nodes XGBoost deleted are never reached): a node's
            # leaves are numbered from first[node] on, its left subtree's up to first[right child] - 1.
            first: dict[int, int] = {}
            leaves, stack = [], [0]
            while stack:
                node = stack.pop()
                first[node] = len(leaves)
                if left[node] >= 0:
                    stack += [right[node], left[node]]
                elif len(leaves) == BITS_MAX_LEAVES:
                    return None
                else:
                    leaves.append(node)
            leaf_nodes.append(np.asarray(leaves, dtype=np.intp) + offset)
            widest = max(widest, len(leaves))
            for node, low in first.items():
                if left[node] >= 0:
                    masks.append(((1 << (first[right[node]] - low)) - 1) << low)
                    split_nodes.append(offset + node)
                    split_trees.append(index)
        if not masks:
            return None
        width = next(bits for bits in (8, 16, 32, 64) if widest <= bits)
        dtype = np.dtype(f"uint{width}")
        full = (1 << width) - 1
        mask = np.array([full ^ ruled_out for ruled_out in masks], dtype=dtype)
        state = 2 * np.asarray(split_nodes, dtype=np.intp)
        tree_of = np.asarray(split_trees, dtype=np.intp)
        feature, threshold = ensemble._feature.take(state), ensemble._threshold.take(state)
        if np.isnan(threshold).any():
            return None
        with np.errstate(over="ignore"):
            t32 = threshold.astype(np.float32)
        # `+ 0.0` turns -0.0 into 0.0: a -0.0 value (key -1) would be above a -0.0 threshold, and it is not.
        t32 = np.where(t32 > threshold, np.nextafter(t32, np.float32(-np.inf)), t32).astype(np.float64) + 0.0
        columns, rank = np.unique(feature, return_inverse=True)
        keys, position = np.unique((rank.astype(np.int64) << 35) + _order_keys(t32), return_inverse=True)
        distinct = np.bincount((keys + (1 << 34)) >> 35, minlength=len(columns))
        rows = len(keys) + 2 * len(columns)
        if rows * len(trees) * dtype.itemsize > BITS_MAX_BYTES:
            return None
        # Feature by feature: a row per count of thresholds below the value (0 to `distinct`), then the
        # missing-value row. A split's mask goes into the first row counting its threshold, then each
        # feature's rows are ANDed down.
        table = np.full((rows, len(trees)), full, dtype=dtype)
        np.bitwise_and.at(table, (position + 2 * rank + 1, tree_of), mask)
        starts = np.concatenate([[0], np.cumsum(distinct + 2)[:-1]]).astype(np.intp)
        nan_rows = starts + distinct + 1
        for start, nan_row in zip(starts, nan_rows, strict=True):
            np.bitwise_and.accumulate(table[start:nan_row], axis=0, out=table[start:nan_row])
        nan_right = ensemble._nan_right.take(state)
        np.bitwise_and.at(table, (nan_rows.take(rank[nan_right]), tree_of[nan_right]), mask[nan_right])
        padded = np.zeros((len(trees), width), dtype=np.intp)
        for index, own in enumerate(leaf_nodes):
            padded[index, : len(own)] = own
        return cls(keys, None if len(columns) == ensemble.n_features else columns, table, nan_rows, padded)

    def cheaper_up_to(self, n_trees: int, depth: int) -> int:
        """The largest row count for which these tables should find the leaves faster than the walk."""
        bits_ns = self.n_columns * (_BITS_PAIR_FEATURE_NS + _BITS_BYTE_NS * self._table.dtype.itemsize)
        per_row = n_trees * (bits_ns - depth * _WALK_PAIR_LEVEL_NS) / 1000
        saved = _WALK_CALL_US + depth * _WALK_LEVEL_US - _BITS_CALL_US
        return np.iinfo(np.intp).max if per_row <= 0 else int(saved / per_row)

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """`TreeEnsemble._leaves` for `x` from `prepare` (float32 values)."""
        values = x if self._columns is None else x[:, self._columns]
        row = np.searchsorted(self._keys, _order_keys(values) + self._feature_keys) + self._row_shift
        missing = np.isnan(values)
        if missing.any():
            row = np.where(missing, self._nan_rows, row)
        if row.size * self._table.strides[0] <= _BITS_GATHER_BYTES:
            possible = np.bitwise_and.reduce(self._table.take(row, axis=0), axis=1)
        else:  # feature by feature, so as not to allocate and fill one large array
            row = row.T
            possible = self._table.take(row[0], axis=0)
            for own in row[1:]:
                possible &= self._table.take(own, axis=0)
        return self._leaf_nodes.take(np.bitwise_count(possible ^ (possible - 1)) + self._leaf_base).T


class TreeEnsemble:
    """All trees of one fitted estimator as flat arrays, evaluated together with numpy.

    A walk's state is `2 * node` (a global node index): `_children[state + go_right]` is the next state,
    and the per-node arrays are stored twice (at `2 * node` and `2 * node + 1`) so that the state indexes
    them directly. Leaves point to themselves, so after `max_depth` levels every pair is on its leaf.
    """

    def __init__(
        self,
        trees: list[Any],
        values: list[np.ndarray],
        *,
        estimator: Any,
        n_features: int,
        allow_nan: bool,
        combine: Combine,
        proba: Combine | None,
        label: Combine | None,
        max_pairs: int,
    ) -> None:
        sizes = [tree.node_count for tree in trees]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        lefts, rights, features, thresholds, nan_left = [], [], [], [], []
        for tree, offset in zip(trees, offsets, strict=True):
            own = np.arange(tree.node_count, dtype=np.intp)
            leaf = tree.children_left < 0
            lefts.append(np.where(leaf, own, tree.children_left) + offset)
            rights.append(np.where(leaf, own, tree.children_right) + offset)
            features.append(np.where(leaf, 0, tree.feature))
            thresholds.append(tree.threshold)
            nan_left.append(tree.missing_go_to_left)
        left, right = np.concatenate(lefts), np.concatenate(rights)
        self._children = np.empty(2 * len(left), dtype=np.intp)
        self._children[0::2] = 2 * left
        self._children[1::2] = 2 * right
        self._feature = np.repeat(np.concatenate(features).astype(np.intp), 2)
        self._threshold = np.repeat(np.concatenate(thresholds).astype(np.float64), 2)
        self._nan_right = np.repeat(np.concatenate(nan_left) == 0, 2)
        self._leaf = np.repeat(left == np.arange(len(left)), 2)
        self._starts = 2 * offsets
        self._values = np.concatenate(values).astype(np.float64)  # leaf outputs, one row per node
        self._depth = max(tree.max_depth for tree in trees)
        self._combine = combine
        self._proba = proba
        self._label = label
        self.n_trees = len(trees)
        self.n_features = n_features
        self.leaf_bits = _LeafBits.build(trees, offsets, self)
        # Calls of up to this many rows find their leaves through `leaf_bits` (0 without it).
        self.bits_max_rows = 0 if self.leaf_bits is None else self.leaf_bits.cheaper_up_to(self.n_trees, self._depth)
        self.allow_nan = allow_nan
        self.classifier = proba is not None
        self.estimator = estimator
        # Larger batches go to sklearn (see FOREST_MAX_PAIRS).
        self.max_rows = max(1, max_pairs // self.n_trees)

    def prepare(self, x: np.ndarray) -> np.ndarray | None:
        """`x` as sklearn sees it (float32 values, held as float64), or None when sklearn must handle it.

        None for what sklearn would refuse (a wrong shape, infinity or values beyond float32, NaN where
        it is not accepted), so that the caller gets sklearn's own error.
        """
        if x.ndim != 2 or x.shape[1] != self.n_features or x.dtype.kind not in "fiub":
            return None
        with np.errstate(over="ignore"):  # values beyond float32 become infinite, which sklearn refuses
            x32 = x.astype(np.float32)
        if not np.isfinite(x32).all() and (not self.allow_nan or np.isinf(x32).any()):
            return None
        return x32.astype(np.float64)

    def _thresholds_by_feature(self) -> list[np.ndarray]:
        """The finite thresholds of the split nodes on each feature.

        A split that only separates missing values from the rest has an infinite threshold.
        """
        split = ~self._leaf[0::2] & np.isfinite(self._threshold[0::2])
        features, thresholds = self._feature[0::2][split], self._threshold[0::2][split]
        return [thresholds[features == column] for column in range(self.n_features)]

    def probe_rows(self, count: int, *, seed: int) -> np.ndarray:
        """Rows whose values sit on, just beside and around split thresholds: where traversals can differ.

        With NaN accepted, about one value in ten is NaN.
        """
        rng = np.random.default_rng(seed)
        rows = np.zeros((count, self.n_features))
        for column, own in enumerate(self._thresholds_by_feature()):
            if not len(own):
                continue
            picked = own[rng.integers(len(own), size=count)].astype(np.float32)
            # On the float32 threshold, one float32 step either side, or a spread-out value.
            step = rng.integers(4, size=count)
            spread = picked + rng.normal(scale=float(np.std(own)) + 1e-3, size=count).astype(np.float32)
            rows[:, column] = np.select(
                [step == 0, step == 1, step == 2],
                [picked, np.nextafter(picked, np.float32(-np.inf)), np.nextafter(picked, np.float32(np.inf))],
                spread,
            )
        if self.allow_nan:
            rows[rng.random(rows.shape) < 0.1] = np.nan
        return rows

    def perturb(self, x: np.ndarray, *, seed: int) -> np.ndarray:
        """`x` twice over, with noise on the scale of each feature's thresholds (and NaN where accepted)."""
        rng = np.random.default_rng(seed)
        scale = np.array([np.std(own) if len(own) else 1.0 for own in self._thresholds_by_feature()])
        rows = np.vstack([x, x]).astype(np.float64)
        rows += rng.normal(size=rows.shape) * (scale + 1e-3)
        if self.allow_nan:
            rows[rng.random(rows.shape) < 0.1] = np.nan
        return rows

    def _leaves(self, x: np.ndarray) -> np.ndarray:
        """The leaf (global node index) of every (tree, row) pair, shape (n_trees, n_rows)."""
        if self.leaf_bits is not None and len(x) <= self.bits_max_rows:
            return self.leaf_bits.leaves(x)
        return self._walk(x)

    def _walk(self, x: np.ndarray) -> np.ndarray:
        """`_leaves` by walking all (tree, row) pairs down together, one level at a time."""
        rows, width = x.shape
        flat = x.ravel()
        state = np.repeat(self._starts, rows)
        # Each pair's row offset in `flat` (np.tile does the same through several Python-level steps).
        base = np.broadcast_to(np.arange(0, rows * width, width, dtype=np.intp), (self.n_trees, rows)).ravel()
        has_nan = self.allow_nan and bool(np.isnan(flat).any())
        # From the first compaction on: every pair's final state by position, and where the walkers are.
        leaves: np.ndarray | None = None
        walking_at: np.ndarray | None = None
        for level in range(self._depth):
            value = flat.take(self._feature.take(state) + base)
            go_right = value > self._threshold.take(state)
            if has_nan:
                go_right = np.where(np.isnan(value), self._nan_right.take(state), go_right)
            state = self._children.take(state + go_right)
            if level % _COMPACT_EVERY != _COMPACT_EVERY - 1 or level + 1 == self._depth:
                continue
            walking = ~self._leaf.take(state)
            if walking.all():
                continue
            finished = ~walking
            if leaves is None or walking_at is None:
                leaves = state.copy()
                walking_at = np.flatnonzero(walking)
            else:
                leaves[walking_at[finished]] = state[finished]
                walking_at = walking_at[walking]
            state, base = state[walking], base[walking]
            if not len(state):
                break
        if leaves is not None and walking_at is not None:
            leaves[walking_at] = state
            state = leaves
        return (state >> 1).reshape(self.n_trees, rows)

    def _output(self, x: np.ndarray) -> np.ndarray:
        return self._combine(self._values.take(self._leaves(x), axis=0))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """`estimator.predict` for a matrix from `prepare`."""
        out = self._output(x)
        return out if self._label is None else self._label(out)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """`estimator.predict_proba` for a matrix from `prepare` (classifiers only)."""
        if self._proba is None:
            raise ValueError(f"{type(self.estimator).__name__} has no predict_proba")
        return self._proba(self._output(x))


def _forest(estimator: Any, trees: list[Any], classifier: bool, first: Any) -> TreeEnsemble:
    from sklearn.utils import get_tags

    count = len(trees)

    def mean(per_tree: np.ndarray) -> np.ndarray:
        return _sequential_sum(per_tree) / count

    proba = label = None
    if classifier:
        classes = estimator.classes_
        values = [tree.value[:, 0, : int(estimator.n_classes_)] for tree in trees]

        def proba(out: np.ndarray) -> np.ndarray:
            return out

        def label(out: np.ndarray) -> np.ndarray:
            return classes.take(np.argmax(out, axis=1), axis=0)

    else:
        values = [tree.value[:, 0, 0] for tree in trees]
    return TreeEnsemble(
        trees,
        values,
        estimator=estimator,
        n_features=int(estimator.n_features_in_),
        # sklearn validates a forest's X with its first tree's rule (`_support_missing_values`).
        allow_nan=bool(get_tags(first).input_tags.allow_nan),
        combine=mean,
        proba=proba,
        label=label,
        max_pairs=FOREST_MAX_PAIRS,
    )


def _boosting(estimator: Any, classifier: bool) -> TreeEnsemble | None:
    init = estimator.init_
    if not (isinstance(init, str) and init == "zero") and type(init).__module__ != "sklearn.dummy":
        return None  # a user's init estimator may depend on X: not a constant to precompute
    loss = estimator.loss
    if classifier and loss not in ("log_loss", "exponential"):
        return None
    stages = estimator.estimators_
    n_stages, per_stage = stages.shape
    trees = [stages[i, k].tree_ for i in range(n_stages) for k in range(per_stage)]
    if any(tree.value.shape[1:] != (1, 1) for tree in trees):
        return None
    # The dummy init predicts the same raw value for every row: compute it once rather than per call.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no feature names on this probe row
        start = np.asarray(
            estimator._raw_predict_init(np.zeros((1, estimator.n_features_in_), dtype=np.float32)), np.float64
        )
    if start.shape != (1, per_stage):
        return None
    rate = float(estimator.learning_rate)
    # One constant tree per output goes first, so that the in-order sum starts from the init value;
    # `rate * value` is the product predict_stages adds (same operands, same bits).
    all_trees = [_ConstantTree() for _ in range(per_stage)] + trees
    values = [start[0, k : k + 1] for k in range(per_stage)] + [rate * tree.value[:, 0, 0] for tree in trees]

    def margins(per_tree: np.ndarray) -> np.ndarray:
        return _sequential_sum(per_tree.reshape(n_stages + 1, per_stage, -1)).T

    if not classifier:
        return TreeEnsemble(
            all_trees,
            values,
            estimator=estimator,
            n_features=int(estimator.n_features_in_),
            allow_nan=False,  # GradientBoosting*.predict validates X with ensure_all_finite=True
            combine=lambda per_tree: margins(per_tree)[:, 0],
            proba=None,
            label=None,
            max_pairs=BOOSTING_MAX_PAIRS,
        )

    from scipy.special import expit

    classes = estimator.classes_
    proba: Combine
    label: Combine
    if per_stage == 1:
        # LogitLink.inverse is expit(raw); the exponential loss's HalfLogitLink.inverse is expit(2 * raw).
        scale = 2 if loss == "exponential" else 1

        def proba(raw: np.ndarray) -> np.ndarray:
            out = np.empty((len(raw), 2), dtype=np.float64)
            out[:, 1] = expit(scale * raw[:, 0])
            out[:, 0] = 1 - out[:, 1]
            return out

        def label(raw: np.ndarray) -> np.ndarray:
            return classes[(raw[:, 0] >= 0).astype(int)]

    else:

        def proba(raw: np.ndarray) -> np.ndarray:
            # sklearn.utils.extmath.softmax, step by step.
            out = raw.copy()
            out -= out.max(axis=1).reshape(-1, 1)
            np.exp(out, out=out)
            out /= out.sum(axis=1).reshape(-1, 1)
            return out

        def label(raw: np.ndarray) -> np.ndarray:
            return classes[np.argmax(raw, axis=1)]

    return TreeEnsemble(
        all_trees,
        values,
        estimator=estimator,
        n_features=int(estimator.n_features_in_),
        allow_nan=False,
        combine=margins,
        proba=proba,
        label=label,
        max_pairs=BOOSTING_MAX_PAIRS,
    )


def compile_trees(estimator: Any) -> TreeEnsemble | None:
    """The numpy version of a fitted sklearn tree ensemble, or None when it is not one we can reproduce."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor

    kind = type(estimator)  # exact types: a subclass may predict differently
    classifiers = (DecisionTreeClassifier, ExtraTreeClassifier, RandomForestClassifier, ExtraTreesClassifier)
    if getattr(estimator, "n_outputs_", 1) != 1 or not hasattr(estimator, "n_features_in_"):
        return None
    if kind in (GradientBoostingClassifier, GradientBoostingRegressor):
        if not hasattr(estimator, "estimators_"):
            return None
        return _boosting(estimator, classifier=kind is GradientBoostingClassifier)
    single = (DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor)
    if kind in single and hasattr(estimator, "tree_"):
        return _forest(estimator, [estimator.tree_], kind in classifiers, estimator)
    forests = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)
    if kind in forests and getattr(estimator, "estimators_", None):
        members = estimator.estimators_
        if any(type(member) not in single for member in members):
            return None
        return _forest(estimator, [member.tree_ for member in members], kind in classifiers, members[0])
    return None


class _BoosterTree:
    """One tree of an XGBoost model's JSON dump, with the `tree_` attributes `TreeEnsemble` reads."""

    def __init__(self, tree: dict) -> None:
        self.children_left = np.asarray(tree["left_children"], dtype=np.intp)
        self.children_right = np.asarray(tree["right_children"], dtype=np.intp)
        self.feature = np.asarray(tree["split_indices"], dtype=np.intp)
        # A leaf keeps its value where a split keeps its condition.
        split = np.asarray(tree["split_conditions"], dtype=np.float32)
        self.leaf_values = split.astype(np.float64)
        # XGBoost goes right when `x >= split` in float32; for a float32 x that is `x >` the float32 just
        # below the split, the comparison TreeEnsemble makes.
        self.threshold = np.nextafter(split, np.float32(-np.inf)).astype(np.float64)
        self.missing_go_to_left = np.asarray(tree["default_left"], dtype=np.uint8)
        self.node_count = len(self.children_left)
        depth, frontier = 0, np.array([0], dtype=np.intp)
        while len(inner := frontier[self.children_left[frontier] >= 0]):
            frontier = np.concatenate([self.children_left[inner], self.children_right[inner]])
            depth += 1
        self.max_depth = depth


def compile_booster(booster: Any) -> TreeEnsemble | None:
    """The numpy version of an XGBoost tree booster, predicting its margin (raw score) like
    `booster.inplace_predict(x, predict_type="margin")`: float32, shape (rows,) or (rows, classes).

    None for what it does not reproduce: dart (which weighs trees at predict time), gblinear,
    categorical splits, multi-target trees.
    """
    config = json.loads(booster.save_config())["learner"]
    if config["gradient_booster"]["name"] != "gbtree":
        return None
    model = json.loads(booster.save_raw("json"))["learner"]
    if int(model["learner_model_param"].get("num_target", "1")) != 1 or "c" in model.get("feature_types", []):
        return None
    dump = model["gradient_booster"]["model"]
    if not dump["trees"]:
        return None
    for tree in dump["trees"]:
        if any(tree["split_type"]) or tree["tree_param"].get("size_leaf_vector", "1") not in ("0", "1"):
            return None
    n_features = booster.num_features()
    # The base margin as XGBoost itself computes it (from base_score, through the objective's link, in
    # float32): an empty range of boosting rounds predicts it alone.
    base = np.asarray(
        booster.inplace_predict(np.zeros((1, n_features)), predict_type="margin", iteration_range=(1, 1)),
        dtype=np.float32,
    ).reshape(-1)
    groups = len(base)
    tree_group = np.asarray(dump["tree_info"], dtype=np.intp)
    per_group = np.bincount(tree_group, minlength=groups)
    if len(per_group) != groups or (per_group != per_group[0]).any():
        return None
    rounds = int(per_group[0])
    # Round by round, one tree per output group, so that each group's trees sum in their own order.
    order = np.stack([np.flatnonzero(tree_group == group) for group in range(groups)], axis=1).ravel()
    trees = [_BoosterTree(dump["trees"][index]) for index in order]
    values = [base[group : group + 1].astype(np.float64) for group in range(groups)]
    values += [tree.leaf_values for tree in trees]

    def margins(per_tree: np.ndarray) -> np.ndarray:
        # XGBoost starts from the base margin and adds each tree's leaf value in float32, tree after tree.
        summed = _sequential_sum(per_tree.astype(np.float32).reshape(rounds + 1, groups, -1))
        return summed[0] if groups == 1 else summed.T

    return TreeEnsemble(
        [_ConstantTree() for _ in range(groups)] + trees,
        values,
        estimator=booster,
        n_features=n_features,
        allow_nan=True,  # NaN is XGBoost's missing value: it takes the split's default direction
        combine=margins,
        proba=None,
        label=None,
        max_pairs=BOOSTER_MAX_PAIRS,
    )
