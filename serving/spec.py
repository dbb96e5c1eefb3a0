"""The deployment spec a model server runs from: which versions, their traffic weights, the shadow, limits.

The console writes it as a JSON file (see docs/model-server.md) and the server refuses to start on a bad one,
naming the field, because a half-understood spec would route traffic somewhere nobody asked for.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_EVENT_BUFFER_SIZE = 10_000
DEFAULT_EVENT_BUFFER_BYTES = 64 * 1024 * 1024
# Below the console's upload limit (DATA_UPLOAD_MAX_MEMORY_SIZE, 10 MiB), with room for a proxy's own.
DEFAULT_EVENT_MAX_POST_BYTES = 8 * 1024 * 1024
DEFAULT_STICKY_HEADER = "X-Request-Key"
DEFAULT_STICKY_FIELD = "request_key"
TOTAL_WEIGHT = 100
# The model name is a URL path segment of the V2 protocol.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_HASH_CHUNK = 1 << 20


class SpecError(ValueError):
    """A deployment spec that cannot be served; `field` is the dotted path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"spec field {field!r}: {message}")
        self.field = field


@dataclass(frozen=True)
class ModelRef:
    """One model version the server loads: a live version (with a weight) or the shadow (weight 0)."""

    version_id: str | int
    label: str
    artifact_path: str
    sha256: str
    weight: int = 0


@dataclass(frozen=True)
class Spec:
    deployment_id: str | int
    name: str
    token: str
    console_url: str
    versions: tuple[ModelRef, ...]
    shadow: ModelRef | None
    sticky_header: str
    sticky_field: str
    max_rows: int
    max_body_bytes: int
    trust_pickle: bool
    event_buffer_size: int
    event_buffer_bytes: int
    event_max_post_bytes: int

    def all_models(self) -> tuple[ModelRef, ...]:
        return self.versions + ((self.shadow,) if self.shadow else ())


def _require(data: Mapping, key: str, path: str) -> Any:
    if key not in data:
        raise SpecError(path, "is required")
    return data[key]


def _string(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise SpecError(path, "must be a non-empty string" if not allow_empty else "must be a string")
    return value


def _identifier(value: Any, path: str) -> str | int:
    # Console ids are database integers or strings (uuids); both round-trip unchanged into events.
    if isinstance(value, bool) or not isinstance(value, int | str) or (isinstance(value, str) and not value.strip()):
        raise SpecError(path, "must be a non-empty string or an integer")
    return value


def _positive_int(data: Mapping, key: str, default: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SpecError(key, "must be a positive integer")
    return value


def _model(data: Any, path: str, *, with_weight: bool) -> ModelRef:
    if not isinstance(data, Mapping):
        raise SpecError(path, "must be an object")
    version_id = _identifier(_require(data, "version_id", f"{path}.version_id"), f"{path}.version_id")
    label = data.get("label", str(version_id))
    _string(label, f"{path}.label")
    artifact_path = _string(_require(data, "artifact_path", f"{path}.artifact_path"), f"{path}.artifact_path")
    sha256 = _require(data, "sha256", f"{path}.sha256")
    if not isinstance(sha256, str) or not _SHA256_RE.match(sha256.lower()):
        raise SpecError(f"{path}.sha256", "must be 64 hexadecimal characters")
    weight = 0
    if with_weight:
        weight = _require(data, "weight", f"{path}.weight")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= TOTAL_WEIGHT:
            raise SpecError(f"{path}.weight", f"must be an integer from 0 to {TOTAL_WEIGHT}")
    return ModelRef(version_id, label, artifact_path, sha256.lower(), weight)


def parse_spec(data: Any, *, base_dir: Path | None = None) -> Spec:
    """Validate a decoded spec. Relative artifact paths are taken relative to `base_dir` (the spec's folder)."""
    if not isinstance(data, Mapping):
        raise SpecError("(root)", "the spec must be a JSON object")
    deployment_id = _identifier(_require(data, "deployment_id", "deployment_id"), "deployment_id")
    name = _string(_require(data, "name", "name"), "name")
    if not _NAME_RE.match(name):
        raise SpecError("name", "may hold only letters, digits, '.', '_' and '-' (it is a URL path segment)")
    console_url = _string(data.get("console_url", ""), "console_url", allow_empty=True).strip()
    if console_url and not console_url.startswith(("http://", "https://")):
        raise SpecError("console_url", "must be an http:// or https:// URL, or empty to turn event shipping off")
    token = _string(data.get("token", ""), "token", allow_empty=True)
    if console_url and not token:
        raise SpecError("token", "is required when console_url is set")

    raw_versions = _require(data, "versions", "versions")
    if not isinstance(raw_versions, list) or not raw_versions:
        raise SpecError("versions", "must be a non-empty list")
    versions = tuple(_model(v, f"versions[{i}]", with_weight=True) for i, v in enumerate(raw_versions))
    seen: set[str] = set()
    for i, version in enumerate(versions):
        if str(version.version_id) in seen:
            raise SpecError(f"versions[{i}].version_id", f"{version.version_id!r} appears twice")
        seen.add(str(version.version_id))
    total = sum(v.weight for v in versions)
    if total != TOTAL_WEIGHT:
        raise SpecError("versions", f"weights must sum to {TOTAL_WEIGHT}, not {total}")

    shadow = None
    if data.get("shadow") is not None:
        shadow = _model(data["shadow"], "shadow", with_weight=False)
        if str(shadow.version_id) in seen:
            raise SpecError("shadow.version_id", "the shadow must not also be a live version")

    sticky = data.get("sticky_key") or {}
    if not isinstance(sticky, Mapping):
        raise SpecError("sticky_key", "must be an object with 'header' and 'field'")
    sticky_header = _string(sticky.get("header", DEFAULT_STICKY_HEADER), "sticky_key.header")
    if not _HEADER_RE.match(sticky_header):
        raise SpecError("sticky_key.header", "must be an HTTP header name")
    sticky_field = _string(sticky.get("field", DEFAULT_STICKY_FIELD), "sticky_key.field")

    trust_pickle = data.get("trust_pickle", False)
    if not isinstance(trust_pickle, bool):
        raise SpecError("trust_pickle", "must be true or false")

    if base_dir is not None:
        versions = tuple(_resolved(v, base_dir) for v in versions)
        shadow = _resolved(shadow, base_dir) if shadow else None
    return Spec(
        deployment_id=deployment_id,
        name=name,
        token=token,
        console_url=console_url,
        versions=versions,
        shadow=shadow,
        sticky_header=sticky_header,
        sticky_field=sticky_field,
        max_rows=_positive_int(data, "max_rows", DEFAULT_MAX_ROWS),
        max_body_bytes=_positive_int(data, "max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        trust_pickle=trust_pickle,
        event_buffer_size=_positive_int(data, "event_buffer_size", DEFAULT_EVENT_BUFFER_SIZE),
        event_buffer_bytes=_positive_int(data, "event_buffer_bytes", DEFAULT_EVENT_BUFFER_BYTES),
        event_max_post_bytes=_positive_int(data, "event_max_post_bytes", DEFAULT_EVENT_MAX_POST_BYTES),
    )


def _resolved(model: ModelRef, base_dir: Path) -> ModelRef:
    path = Path(model.artifact_path)
    if path.is_absolute():
        return model
    return ModelRef(model.version_id, model.label, str(base_dir / path), model.sha256, model.weight)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file; SpecError names the field that is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError("(file)", f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError("(file)", f"{path} is not valid JSON: {exc}") from exc
    return parse_spec(data, base_dir=path.resolve().parent)


def verify_artifacts(spec: Spec) -> None:
    """Check that every artifact exists and has its sha256, without loading it (cheap enough for a master)."""
    for index, model in enumerate(spec.all_models()):
        field = "shadow" if model is spec.shadow else f"versions[{index}]"
        digest = hashlib.sha256()
        try:
            with open(model.artifact_path, "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise SpecError(f"{field}.artifact_path", f"cannot read {model.artifact_path}: {exc.strerror}") from exc
        if digest.hexdigest() != model.sha256:
            raise SpecError(f"{field}.sha256", f"{model.artifact_path} has sha256 {digest.hexdigest()}")
