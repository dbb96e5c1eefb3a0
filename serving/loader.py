"""The one uniform model loader: verify a bundle, load only trusted content, and predict through `Predictor`."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.bundle import BundleError, import_skops, manifest_from_zip, open_zip, read_members
from serving.fastpath import compile_transform
from serving.forest import TreeEnsemble, compile_booster, compile_trees
from serving.signature import InputError, coerce_columns

# skops may construct only types from these modules (plus skops' own defaults: builtins, basic numpy).
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.", "serving.transforms.")
# ...except these corners of them, which can read files, fetch data or compile code when called.
DENIED_MODULE_PREFIXES = (
    "numpy.f2py.",
    "numpy.distutils.",
    "numpy.testing.",
    "numpy.ctypeslib.",
    "numpy.lib.format.",
    "numpy.load",
    "numpy.save",
    "numpy.fromfile",
    "numpy.memmap",
    "numpy.lib._npyio_impl.",
    "sklearn.datasets.",
    "sklearn.externals.",
    "sklearn.utils._testing.",
    "sklearn.utils._joblib.",
)

ColumnsTransform = Callable[[dict[str, np.ndarray]], np.ndarray]


def is_trusted_type(name: str) -> bool:
    return name.startswith(TRUSTED_MODULE_PREFIXES) and not name.startswith(DENIED_MODULE_PREFIXES)


def load_skops(data: bytes, *, what: str) -> Any:
    """Load skops bytes, allowing only types from the trusted modules; BundleError names any other type."""
    sio = import_skops()
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises many kinds of errors on malformed input
        raise BundleError(f"{what} is not a readable skops file: {exc}") from exc
    refused = [name for name in untrusted if not is_trusted_type(name)]
    if refused:
        raise BundleError(f"{what} contains untrusted type(s): {', '.join(refused)}")
    try:
        return sio.load(io.BytesIO(data), trusted=untrusted)
    except Exception as exc:  # a skops file that passes the audit can still fail to construct
        raise BundleError(f"{what} could not be loaded: {exc}") from exc


def _frame_transform(preprocessor: Any) -> ColumnsTransform:
    def transform(columns: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(preprocessor.transform(pd.DataFrame(columns, copy=False)), dtype=np.float64)

    return transform


def _signature_matrix(manifest: Mapping) -> ColumnsTransform:
    """The signature's columns, in order, as one float64 matrix (rows x columns)."""
    names = [spec["name"] for spec in manifest["signature"]["inputs"]]

    def matrix(columns: dict[str, np.ndarray]) -> np.ndarray:
        # One conversion of all columns, transposed, is ~3x faster than column_stack for small batches.
        return np.ascontiguousarray(np.array([columns[name] for name in names], dtype=np.float64).T)

    return matrix


def _compiled_transform(preprocessor: Any, manifest: Mapping) -> ColumnsTransform | None:
    """The numpy version of `preprocessor`, kept only if it matches sklearn on the bundle's input example."""
    signature = manifest["signature"]
    compiled = compile_transform(preprocessor, [spec["name"] for spec in signature["inputs"]])
    example = manifest.get("input_example") or []
    if compiled is None or not example:
        return compiled
    try:
        columns = coerce_columns(example, signature)
        expected = np.asarray(preprocessor.transform(pd.DataFrame(columns, copy=False)), dtype=np.float64)
        matches = np.allclose(compiled(columns), expected, equal_nan=True)
    except (ValueError, TypeError):
        return None
    return compiled if matches else None


def _columns_transform(preprocessor: Any | None, manifest: Mapping) -> ColumnsTransform:
    """Columns -> model matrix; a bundle without a preprocessor takes its signature's columns in order."""
    if preprocessor is None:
        return _signature_matrix(manifest)
    return _compiled_transform(preprocessor, manifest) or _frame_transform(preprocessor)


def _softmax(margin: np.ndarray) -> np.ndarray:
    shifted = np.exp(margin - margin.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# Compiled trees are kept only when they give sklearn's answers on the probes: probabilities within this
# absolute difference, regression values within this relative (and absolute) one, identical labels.
TREE_TOLERANCE = 1e-9
_PROBE_ROWS = 32
_NUMERIC_INPUTS = ("number", "integer", "boolean")


def _final_estimator(pipeline: Any) -> Any:
    from sklearn.pipeline import Pipeline

    return pipeline.steps[-1][1] if isinstance(pipeline, Pipeline) else pipeline


def _tree_features(pipeline: Any, manifest: Mapping, transform: ColumnsTransform | None) -> ColumnsTransform | None:
    """Columns -> the matrix the pipeline's final estimator sees, or None when we cannot build it."""
    from sklearn.pipeline import Pipeline

    if isinstance(pipeline, Pipeline):
        if transform is not None:
            return transform
        # A preprocessor we cannot compile still runs in sklearn: the trees are most of the time.
        return _frame_transform(pipeline.steps[0][1] if len(pipeline.steps) == 2 else pipeline[:-1])
    # A bare estimator gets the signature's columns as a DataFrame: sklearn takes them by name, in order.
    inputs = manifest["signature"]["inputs"]
    names = [spec["name"] for spec in inputs]
    fitted_names = getattr(pipeline, "feature_names_in_", None)
    if fitted_names is not None and list(fitted_names) != names:
        return None
    if not all(spec["type"] in _NUMERIC_INPUTS for spec in inputs):
        return None
    return _signature_matrix(manifest)


def _matches(trees: TreeEnsemble, x: np.ndarray, predict: Callable, predict_proba: Callable) -> bool:
    """Compiled trees against sklearn's `predict` (and `predict_proba`) on the same input."""
    prepared = trees.prepare(x)
    if prepared is None:
        return False
    ours, theirs = trees.predict(prepared), np.asarray(predict())
    if ours.shape != theirs.shape:
        return False
    if not trees.classifier:
        return bool(np.allclose(ours, theirs, rtol=TREE_TOLERANCE, atol=TREE_TOLERANCE))
    ours_proba, theirs_proba = trees.predict_proba(prepared), np.asarray(predict_proba())
    return (
        bool(np.array_equal(ours, theirs))
        and ours_proba.shape == theirs_proba.shape
        and bool(np.allclose(ours_proba, theirs_proba, rtol=0.0, atol=TREE_TOLERANCE))
    )


def _verified_trees(
    pipeline: Any, manifest: Mapping, features: ColumnsTransform, *, features_checked: bool
) -> TreeEnsemble | None:
    """The compiled final estimator, kept only if it predicts like sklearn on the example and probe rows.

    `features_checked` says the features need no check of their own (the signature's columns, or a
    preprocessor compiled and checked by `_compiled_transform`); otherwise the bundle needs an example.
    """
    estimator = _final_estimator(pipeline)
    if not type(estimator).__module__.startswith(("sklearn.ensemble.", "sklearn.tree.")):
        return None
    example = manifest.get("input_example") or []
    if not example and not features_checked:
        return None
    trees = compile_trees(estimator)
    if trees is None:
        return None
    try:
        with warnings.catch_warnings():
            # Probe matrices carry no feature names, which sklearn warns about.
            warnings.simplefilter("ignore")
            probes = [trees.probe_rows(_PROBE_ROWS, seed=0)]
            if example:
                columns = coerce_columns(example, manifest["signature"])
                frame = pd.DataFrame(columns, copy=False)
                x = np.asarray(features(columns))
                # The whole path, columns to answer, against the pipeline itself.
                if not _matches(trees, x, lambda: pipeline.predict(frame), lambda: pipeline.predict_proba(frame)):
                    return None
                probes += [x, trees.perturb(x, seed=1)]
            # Batches and single rows (numpy reduces them along different paths).
            for z in [*probes, probes[0][:1], probes[-1][-1:]]:
                if not _matches(trees, z, lambda z=z: estimator.predict(z), lambda z=z: estimator.predict_proba(z)):
                    return None
    except Exception:  # failing to reproduce sklearn, however it fails, means serving through sklearn
        return None
    return trees


class _SklearnBackend:
    def __init__(self, pipeline: Any, manifest: Mapping) -> None:
        from sklearn.pipeline import Pipeline

        self._pipeline = pipeline
        # Run our compiled preprocessor and the final estimator when the pipeline is preprocessor + model:
        # sklearn's per-call validation costs milliseconds on a 1-row frame.
        compiled = None
        if isinstance(pipeline, Pipeline) and len(pipeline.steps) == 2:
            compiled = _compiled_transform(pipeline.steps[0][1], manifest)
        self._transform = compiled
        self._estimator = pipeline.steps[-1][1] if compiled is not None else None
        # A tree ensemble's own predict is mostly per-tree overhead (~5 ms for 100 trees): walk compiled
        # trees instead, with the same features, when they reproduce sklearn's answers.
        self._features = _tree_features(pipeline, manifest, compiled)
        self._trees = None
        if self._features is not None:
            checked = compiled is not None or not isinstance(pipeline, Pipeline)
            self._trees = _verified_trees(pipeline, manifest, self._features, features_checked=checked)
        self.compiled_model = type(self._trees.estimator).__name__ if self._trees is not None else None

    def _tree_input(self, columns: dict[str, np.ndarray]) -> np.ndarray | None:
        if self._trees is None or len(next(iter(columns.values()), ())) > self._trees.max_rows:
            return None
        return self._trees.prepare(np.asarray(self._features(columns)))

    def predict(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        try:
            x = self._tree_input(columns)
            if x is not None:
                return self._trees.predict(x)
            if self._transform is not None:
                return self._estimator.predict(self._transform(columns))
            return self._pipeline.predict(pd.DataFrame(columns, copy=False))
        except ValueError:
            _refuse_infinity(columns)
            raise

    def predict_proba(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        try:
            x = self._tree_input(columns)
            if x is not None:
                return self._trees.predict_proba(x)
            if self._transform is not None:
                return self._estimator.predict_proba(self._transform(columns))
            return self._pipeline.predict_proba(pd.DataFrame(columns, copy=False))
        except ValueError:
            _refuse_infinity(columns)
            raise


def _refuse_infinity(columns: dict[str, np.ndarray]) -> None:
    """After scikit-learn refused an input: an InputError naming the column when the cause is an infinite value.

    scikit-learn's estimators never take infinity, so it is the client's input at fault, not the model. Checked
    only once a prediction failed, to cost nothing on the way of a good one.
    """
    for name, values in columns.items():
        if values.dtype.kind == "f":
            infinite = np.flatnonzero(np.isinf(values))
            if len(infinite):
                raise InputError(name, f"row {int(infinite[0])}: infinity is not a value this model takes")


class _CustomBackend:
    def __init__(self, model: Any) -> None:
        self._model = model

    def predict(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._model.predict(pd.DataFrame(columns, copy=False)))

    def predict_proba(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        if not hasattr(self._model, "predict_proba"):
            raise ValueError("this custom model has no predict_proba")
        return np.asarray(self._model.predict_proba(pd.DataFrame(columns, copy=False)))


class _LabelMapping:
    """Class index -> original label, for flavors that train on encoded labels."""

    def __init__(self, classes: list | None) -> None:
        self._labels = np.asarray(classes) if classes else None

    def labels(self, proba: np.ndarray) -> np.ndarray:
        return self._labels[np.argmax(proba, axis=1)]


def _verified_booster(booster: Any, output: str) -> TreeEnsemble | None:
    """The compiled booster, kept only if it returns exactly XGBoost's `output` ("margin" or "value").

    The compiled path reads the same features as XGBoost, so the check needs no input example: probe
    rows around the split thresholds (with NaN), spread-out rows, batches of every size it will serve
    and single rows. "value" equals the margin only for objectives without an output transform.
    """
    try:
        trees = compile_booster(booster)
        if trees is None:
            return None
        probes = trees.probe_rows(max(_PROBE_ROWS, trees.max_rows), seed=0)
        spread = trees.perturb(probes[:_PROBE_ROWS], seed=1)
        for x in [probes, spread, probes[:2], probes[:1], spread[-1:]]:
            ours = trees.predict(trees.prepare(x))
            if not np.array_equal(ours, booster.inplace_predict(x, predict_type=output)):
                return None
    except Exception:  # failing to reproduce XGBoost, however it fails, means serving through XGBoost
        return None
    return trees


class _XGBoostBackend:
    def __init__(self, booster: Any, transform: ColumnsTransform, task: str, classes: list | None) -> None:
        self._booster = booster
        self._transform = transform
        self._task = task
        self._mapping = _LabelMapping(classes)
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        self._multiclass = objective.startswith("multi:")
        # Margins work for every classification objective (softprob, softmax, logistic), probabilities don't.
        self._output = "margin" if task == "classification" else "value"
        # XGBoost spends ~0.25 ms per call whatever the batch, mostly outside the trees: small batches
        # walk compiled trees instead, when they return exactly XGBoost's numbers.
        self._trees = _verified_booster(booster, self._output)
        self.compiled_model = "Booster" if self._trees is not None else None

    def _raw(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """XGBoost's margin (classification) or value (regression), float32 as XGBoost returns it."""
        x = self._transform(columns)
        # A sparse matrix (from a one-hot preprocessor) means "absent is missing" to XGBoost: its own path.
        if self._trees is not None and isinstance(x, np.ndarray) and len(x) <= self._trees.max_rows:
            prepared = self._trees.prepare(x)
            if prepared is not None:
                return self._trees.predict(prepared)
        return self._booster.inplace_predict(x, predict_type=self._output)

    def predict_proba(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        margin = np.asarray(self._raw(columns), np.float64)
        if self._multiclass:
            return _softmax(margin.reshape(len(margin), -1))
        positive = 1.0 / (1.0 + np.exp(-margin.reshape(-1)))
        return np.column_stack([1.0 - positive, positive])

    def predict(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        if self._task == "classification":
            return self._mapping.labels(self.predict_proba(columns))
        return np.asarray(self._raw(columns), dtype=np.float64)


class _TorchBackend:
    def __init__(
        self, module: Any, transform: ColumnsTransform, arch: Mapping, task: str, classes: list | None
    ) -> None:
        import torch

        self._torch = torch
        self._module = module.eval()
        self._transform = transform
        self._task = task
        self._mapping = _LabelMapping(classes)
        self._mean = float(arch.get("target_mean", 0.0))
        self._std = float(arch.get("target_std", 1.0))

    def _forward(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        features = np.ascontiguousarray(self._transform(columns), dtype=np.float32)
        with self._torch.inference_mode():
            return self._module(self._torch.from_numpy(features)).numpy().astype(np.float64)

    def predict_proba(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        return _softmax(self._forward(columns))

    def predict(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        if self._task == "classification":
            return self._mapping.labels(self.predict_proba(columns))
        return self._forward(columns)[:, 0] * self._std + self._mean


class Predictor:
    """A loaded model with one interface whatever its flavor; inputs are validated against its signature."""

    def __init__(self, *, manifest: dict, sha256: str, backend: Any) -> None:
        self.manifest = manifest
        self.sha256 = sha256
        self.flavor: str = manifest["flavor"]
        self.task: str = manifest["task"]
        self.classes: list | None = manifest.get("classes")
        self.signature: dict = manifest["signature"]
        self._backend = backend

    def __repr__(self) -> str:
        return f"<Predictor {self.flavor} {self.task} {self.sha256[:12]}>"

    @property
    def compiled_model(self) -> str | None:
        """The model class served by compiled numpy trees (`serving.forest`): the sklearn estimator's, or
        "Booster" for XGBoost; None when the library itself serves."""
        return getattr(self._backend, "compiled_model", None)

    def predict(self, data: Any) -> np.ndarray:
        """Labels (original class values) or values for a DataFrame, a list of row dicts or a dict of columns."""
        return self._backend.predict(coerce_columns(data, self.signature))

    def predict_proba(self, data: Any) -> np.ndarray:
        """Class probabilities, columns in the order of `classes`; ValueError for regression models."""
        if self.task != "classification":
            raise ValueError("predict_proba is only defined for classification models")
        return self._backend.predict_proba(coerce_columns(data, self.signature))


def _load_booster(data: bytes) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as exc:
        raise BundleError(f"model.ubj is not a loadable XGBoost model: {exc}") from exc
    return booster


def _load_torch(members: dict[str, bytes]) -> tuple[Any, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from serving.mlp import build_mlp

    try:
        arch = json.loads(members["architecture.json"])
        module = build_mlp(arch)
        module.load_state_dict(load_safetensors(members["model.safetensors"]), strict=True)
    except (ValueError, RuntimeError, SafetensorError, AttributeError) as exc:
        raise BundleError(f"the PyTorch model could not be rebuilt: {exc}") from exc
    return module, arch


def load_predictor(path: str | Path, *, expected_sha256: str | None = None, trust_pickle: bool = False) -> Predictor:
    """Load a bundle after checking its sha256 (when given) and every member's hash from the manifest."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle: {exc}") from exc
    # Hash the same bytes that get parsed, so the file cannot change between check and use.
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise BundleError(f"bundle hash mismatch: expected {expected_sha256}, got {sha256}")
    with open_zip(data) as archive:
        manifest = manifest_from_zip(archive)
        members = read_members(archive, manifest)
    flavor, task, classes = manifest["flavor"], manifest["task"], manifest.get("classes")
    if task == "classification" and not classes:
        raise BundleError("a classification bundle must list its classes")
    backend: Any
    if flavor == "sklearn":
        backend = _SklearnBackend(load_skops(members["model.skops"], what="model.skops"), manifest)
    elif flavor == "xgboost":
        preprocessor = None
        if "preprocessor.skops" in members:
            preprocessor = load_skops(members["preprocessor.skops"], what="preprocessor.skops")
        transform = _columns_transform(preprocessor, manifest)
        backend = _XGBoostBackend(_load_booster(members["model.ubj"]), transform, task, classes)
    elif flavor == "pytorch":
        preprocessor = load_skops(members["preprocessor.skops"], what="preprocessor.skops")
        module, arch = _load_torch(members)
        backend = _TorchBackend(module, _columns_transform(preprocessor, manifest), arch, task, classes)
    else:
        if not trust_pickle:
            raise BundleError("this bundle holds a pickle (custom flavor); pickle is refused unless trusted")
        import pickle

        try:
            model = pickle.loads(members["model.pkl"])
        except Exception as exc:  # any failure of a trusted unpickle means a bad bundle
            raise BundleError(f"model.pkl could not be unpickled: {exc}") from exc
        backend = _CustomBackend(model)
    return Predictor(manifest=manifest, sha256=sha256, backend=backend)
