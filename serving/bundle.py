"""Model artifact bundles: one zip holding `MLmodel.json` and the flavor's files, each member hashed.

Formats are data, not code, wherever a safe one exists (skops, XGBoost UBJSON, safetensors + a JSON
architecture). Raw pickle exists only as the `custom` flavor and is never read unless explicitly trusted.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import importlib
import importlib.abc
import io
import json
import lzma
import os
import platform
import sys
import tempfile
import types
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.signature import TASKS, check_signature, json_scalar

FORMAT_VERSION = 1
MANIFEST_NAME = "MLmodel.json"
FLAVORS = ("sklearn", "xgboost", "pytorch", "custom")
# Which members each flavor must have; the xgboost preprocessor is optional because a bare uploaded
# booster takes the signature's columns as they are.
FLAVOR_FILES: dict[str, tuple[str, ...]] = {
    "sklearn": ("model.skops",),
    "xgboost": ("model.ubj",),
    "pytorch": ("preprocessor.skops", "model.safetensors", "architecture.json"),
    "custom": ("model.pkl",),
}
INPUT_EXAMPLE_ROWS = 5
# Zip entries get a fixed timestamp so that the same members always give the same bytes.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_HASH_CHUNK = 1 << 20


class BundleError(ValueError):
    """Anything wrong with a model artifact: not a zip, missing or tampered member, refused format."""


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _RefuseImport(importlib.abc.MetaPathFinder):
    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ImportError(f"{fullname} is not imported while skops loads")


def import_skops() -> types.ModuleType:
    """`skops.io`, imported without dragging torch in.

    On import, skops lists every scikit-learn estimator by walking all sklearn modules, and that walk
    imports sklearn's vendored array-api shim for torch, i.e. torch itself: seconds and hundreds of MB
    in a server that only serves a scikit-learn model. The walk skips modules that fail to import, so
    torch is refused for the duration of that first import (torch imports normally afterwards).
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    blocker = None if "torch" in sys.modules else _RefuseImport(frozenset({"torch"}))
    if blocker is not None:
        sys.meta_path.insert(0, blocker)
    try:
        return importlib.import_module("skops.io")
    finally:
        if blocker is not None:
            sys.meta_path.remove(blocker)


def _package_versions(flavor: str) -> dict[str, str]:
    packages = ["numpy", "pandas", "scikit-learn", "skops"]
    packages += {"xgboost": ["xgboost"], "pytorch": ["torch", "safetensors"], "custom": []}.get(flavor, [])
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _example_records(input_example: Any) -> list[dict]:
    if input_example is None:
        return []
    frame = input_example if isinstance(input_example, pd.DataFrame) else pd.DataFrame(list(input_example))
    head = frame.head(INPUT_EXAMPLE_ROWS)
    return [{str(k): json_scalar(v) for k, v in row.items()} for row in head.to_dict("records")]


def _json_params(params: Mapping | None) -> dict:
    # Params may hold numpy scalars or tuples from search spaces; JSON must round-trip them.
    return json.loads(json.dumps(dict(params or {}), default=lambda v: json_scalar(v) if np.isscalar(v) else str(v)))


def _serialize_members(
    flavor: str,
    *,
    pipeline: Any,
    preprocessor: Any,
    booster: Any,
    torch_model: Any,
    torch_arch: Mapping | None,
    custom_model: Any,
) -> dict[str, bytes]:
    sio = import_skops()

    if flavor == "sklearn":
        if pipeline is None:
            raise BundleError("the sklearn flavor needs `pipeline`")
        return {"model.skops": sio.dumps(pipeline)}
    if flavor == "xgboost":
        if booster is None:
            raise BundleError("the xgboost flavor needs `booster`")
        members = {"model.ubj": bytes(booster.save_raw(raw_format="ubj"))}
        if preprocessor is not None:
            members["preprocessor.skops"] = sio.dumps(preprocessor)
        return members
    if flavor == "pytorch":
        if torch_model is None or torch_arch is None or preprocessor is None:
            raise BundleError("the pytorch flavor needs `torch_model`, `torch_arch` and `preprocessor`")
        from safetensors.torch import save as save_safetensors

        state = {name: tensor.detach().cpu().contiguous() for name, tensor in torch_model.state_dict().items()}
        return {
            "preprocessor.skops": sio.dumps(preprocessor),
            "model.safetensors": save_safetensors(state),
            "architecture.json": json.dumps(dict(torch_arch), sort_keys=True).encode(),
        }
    if custom_model is None:
        raise BundleError("the custom flavor needs `custom_model`")
    import pickle

    return {"model.pkl": pickle.dumps(custom_model, protocol=pickle.HIGHEST_PROTOCOL)}


def _write_zip_atomically(path: Path, members: dict[str, bytes]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, data in members.items():
                    archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data, zipfile.ZIP_DEFLATED)
            handle.flush()
            os.fsync(handle.fileno())
        digest = file_sha256(temp_name)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return digest


def save_bundle(
    path: str | Path,
    *,
    flavor: str,
    task: str,
    signature: dict,
    input_example: Any,
    classes: list | None,
    params: Mapping | None,
    pipeline: Any = None,
    preprocessor: Any = None,
    booster: Any = None,
    torch_model: Any = None,
    torch_arch: Mapping | None = None,
    custom_model: Any = None,
) -> str:
    """Write a bundle zip atomically (temp file + rename) and return its sha256."""
    if flavor not in FLAVORS:
        raise BundleError(f"unknown flavor {flavor!r}; expected one of {', '.join(FLAVORS)}")
    if task not in TASKS:
        raise BundleError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    try:
        check_signature(signature)
    except ValueError as exc:
        raise BundleError(f"bad signature: {exc}") from exc
    if task == "classification" and not classes:
        raise BundleError("a classification bundle needs its classes")
    members = _serialize_members(
        flavor,
        pipeline=pipeline,
        preprocessor=preprocessor,
        booster=booster,
        torch_model=torch_model,
        torch_arch=torch_arch,
        custom_model=custom_model,
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "flavor": flavor,
        "task": task,
        "signature": signature,
        "input_example": _example_records(input_example),
        "classes": [json_scalar(c) for c in classes] if task == "classification" and classes is not None else None,
        "framework_versions": _package_versions(flavor),
        "params": _json_params(params),
        "created_at": datetime.now(UTC).isoformat(),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }
    members = {MANIFEST_NAME: json.dumps(manifest, indent=2, sort_keys=True).encode(), **members}
    return _write_zip_atomically(Path(path), members)


# ------------------------------------------------------------------------------------------------ reading


def open_zip(data: bytes) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BundleError("not a model bundle: the file is not a zip archive") from exc


def manifest_from_zip(archive: zipfile.ZipFile) -> dict:
    try:
        manifest = json.loads(archive.read(MANIFEST_NAME))
    except KeyError as exc:
        raise BundleError(f"not a model bundle: {MANIFEST_NAME} is missing") from exc
    except (ValueError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{MANIFEST_NAME} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST_NAME} must be a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"unsupported bundle format_version {manifest.get('format_version')!r}")
    if manifest.get("flavor") not in FLAVORS:
        raise BundleError(f"unknown flavor {manifest.get('flavor')!r}")
    if manifest.get("task") not in TASKS:
        raise BundleError(f"unknown task {manifest.get('task')!r}")
    if not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{MANIFEST_NAME} has no 'files' map")
    try:
        check_signature(manifest.get("signature"))
    except ValueError as exc:
        raise BundleError(f"bad signature in {MANIFEST_NAME}: {exc}") from exc
    for name in FLAVOR_FILES[manifest["flavor"]]:
        if name not in manifest["files"]:
            raise BundleError(f"{manifest['flavor']} bundle lacks {name}")
    return manifest


def read_manifest(path: str | Path) -> dict:
    """The bundle's MLmodel.json, checked for shape (member hashes are checked by the loader)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read bundle: {exc}") from exc
    with open_zip(data) as archive:
        return manifest_from_zip(archive)


def read_members(archive: zipfile.ZipFile, manifest: Mapping) -> dict[str, bytes]:
    """Every member listed in the manifest, each checked against its recorded sha256."""
    expected = manifest["files"]
    unexpected = sorted(set(archive.namelist()) - set(expected) - {MANIFEST_NAME})
    if unexpected:
        raise BundleError(f"bundle holds members not listed in {MANIFEST_NAME}: {', '.join(unexpected)}")
    members: dict[str, bytes] = {}
    for name, digest in expected.items():
        try:
            data = archive.read(name)
        except KeyError as exc:
            raise BundleError(f"bundle member {name} is missing") from exc
        except (zipfile.BadZipFile, OSError, lzma.LZMAError, EOFError) as exc:
            raise BundleError(f"bundle member {name} is corrupt: {exc}") from exc
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise BundleError(f"bundle member {name} hash mismatch: manifest says {digest}, content is {actual}")
        members[name] = data
    return members


# ----------------------------------------------------------------------------------------------- uploads

_PICKLE_PROTOCOLS = range(2, 6)
# Opcodes a protocol 0/1 pickle may start with: MARK, GLOBAL, EMPTY_LIST, EMPTY_DICT, EMPTY_TUPLE, INT...
_OLD_PICKLE_STARTS = b"(c]})IFLNSV"


def _looks_like_pickle(head: bytes, tail: bytes) -> bool:
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return True
    # Old protocols have no magic; they do end with the STOP opcode.
    return bool(head) and head[0] in _OLD_PICKLE_STARTS and tail.endswith(b".")


def _decompressed_head(path: Path, head: bytes) -> bytes | None:
    """The first bytes of a gzip/bz2/xz/lzma/zlib-compressed file (joblib's compressors); never unpickles."""
    import zlib

    try:
        if head.startswith(b"\x1f\x8b"):
            with gzip.open(path, "rb") as handle:
                return handle.read(2)
        if head.startswith(b"BZh"):
            with bz2.open(path, "rb") as handle:
                return handle.read(2)
        if head.startswith(b"\xfd7zXZ\x00") or head.startswith(b"\x5d\x00"):
            with lzma.open(path, "rb") as handle:
                return handle.read(2)
        if head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
            return zlib.decompressobj().decompress(head, 2)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        return None
    return None


def detect_format(path: str | Path) -> str:
    """What an uploaded model file is: bundle, skops, xgboost-ubj, xgboost-json, safetensors, pickle or unknown.

    Looks at magic bytes and container listings only; nothing is deserialized.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(4096)
        handle.seek(max(0, size - 16))
        tail = handle.read(16)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if MANIFEST_NAME in names:
            return "bundle"
        if "schema.json" in names:
            return "skops"
        # torch.save writes a zip around a pickle: loading it means unpickling.
        if any(name.endswith("data.pkl") for name in names):
            return "pickle"
        return "unknown"
    if len(head) >= 9:
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"{" and head[1:2] in b"iUIlLdDSTFZ{[" and b"learner" in head:
        return "xgboost-ubj"
    stripped = head.lstrip()
    if stripped[:1] == b"{" and b'"learner"' in head:
        return "xgboost-json"
    if _looks_like_pickle(head, tail):
        return "pickle"
    inner = _decompressed_head(path, head)
    if inner and len(inner) >= 2 and inner[0] == 0x80 and inner[1] in _PICKLE_PROTOCOLS:
        return "pickle"
    return "unknown"


def _load_uploaded_xgboost(path: Path, signature: Mapping) -> Any:
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except xgb.core.XGBoostError as exc:
        raise BundleError(f"not a loadable XGBoost model: {exc}") from exc
    names = [spec["name"] for spec in signature["inputs"]]
    if booster.num_features() != len(names):
        raise BundleError(f"the XGBoost model takes {booster.num_features()} features, the signature has {len(names)}")
    if booster.feature_names and list(booster.feature_names) != names:
        raise BundleError("the XGBoost model's feature names differ from the signature's inputs")
    non_numeric = [spec["name"] for spec in signature["inputs"] if spec["type"] not in ("integer", "number", "boolean")]
    if non_numeric:
        raise BundleError(f"a bare XGBoost model takes numeric inputs only; not: {', '.join(non_numeric)}")
    return booster


def bundle_from_upload(
    path: str | Path,
    *,
    fmt: str,
    signature: dict,
    task: str,
    classes: list | None,
    trust_pickle: bool = False,
    output_path: str | Path | None = None,
) -> Path:
    """Wrap an uploaded model file into a bundle and return the bundle's path.

    A bare skops pipeline/estimator becomes an sklearn bundle and a bare XGBoost model an xgboost bundle
    (fed the signature's columns in order). Pickle, joblib and cloudpickle files are refused unless
    `trust_pickle`; when refused they are never opened by an unpickler.
    """
    path = Path(path)
    detected = detect_format(path)
    if fmt != detected:
        raise BundleError(f"the file looks like {detected!r}, not {fmt!r}")
    if detected == "pickle" and not trust_pickle:
        raise BundleError("pickle is refused: pickle, joblib and cloudpickle files can run code when loaded")
    target = Path(output_path) if output_path is not None else path.with_name(path.name + ".bundle.zip")
    common: dict[str, Any] = {"task": task, "signature": signature, "input_example": None, "params": {}}
    if detected == "bundle":
        from serving.loader import load_predictor  # loading proves every member is intact and trusted

        load_predictor(path, trust_pickle=trust_pickle)
        return path
    if detected == "skops":
        from sklearn.pipeline import Pipeline

        from serving.loader import load_skops

        model = load_skops(path.read_bytes(), what="the uploaded skops file")
        if not hasattr(model, "predict"):
            raise BundleError("the skops file does not hold a model with predict()")
        pipeline = model if isinstance(model, Pipeline) else Pipeline([("model", model)])
        model_classes = getattr(pipeline, "classes_", None)
        if task == "classification" and model_classes is not None:
            classes = list(model_classes)
        save_bundle(target, flavor="sklearn", classes=classes, pipeline=pipeline, **common)
        return target
    if detected in ("xgboost-ubj", "xgboost-json"):
        booster = _load_uploaded_xgboost(path, signature)
        save_bundle(target, flavor="xgboost", classes=classes, booster=booster, **common)
        return target
    if detected == "pickle":
        import joblib  # joblib reads plain pickles, cloudpickles and its own compressed files

        try:
            model = joblib.load(path)
        except Exception as exc:  # any failure of a trusted unpickle means a bad upload
            raise BundleError(f"could not load the pickle: {exc}") from exc
        if not hasattr(model, "predict"):
            raise BundleError("the pickle does not hold a model with predict()")
        save_bundle(target, flavor="custom", classes=classes, custom_model=model, **common)
        return target
    if detected == "safetensors":
        raise BundleError("a bare safetensors file has no architecture; upload a bundle made by the trainer")
    raise BundleError("unknown model file format")
