"""A content-addressed artifact store: files are kept by their sha256 and verified on every read.

Callers never name a path: they hand over bytes and get back a hash, and they ask for bytes by
hash. `ArtifactStore` is the interface; `LocalArtifactStore` keeps files under ARTIFACT_ROOT. An
S3-compatible store would implement the same five methods.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from django.conf import settings

CHUNK_SIZE = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(Exception):
    """Base class for artifact store errors."""


class ArtifactNotFound(ArtifactError):
    pass


class ArtifactIntegrityError(ArtifactError):
    """The bytes on disk no longer hash to the name they are stored under."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"artifact {expected[:12]}… failed verification: its content hashes to {actual[:12]}…")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True)
class StoredArtifact:
    sha256: str
    size: int


def validate_sha256(value: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ArtifactNotFound(f"not an artifact id: {value!r}")
    return value


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ArtifactStore(Protocol):
    def put_chunks(self, chunks: Iterable[bytes]) -> StoredArtifact: ...

    def put_hashed_file(self, path: Path, *, sha256: str, size: int) -> StoredArtifact: ...

    @contextmanager
    def open_verified(self, sha256: str) -> Iterator[BinaryIO]: ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None: ...


class LocalArtifactStore:
    """Files under `root/ab/cd/<sha256>`; writes go to `root/tmp` first, then an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"

    def _path(self, sha256: str) -> Path:
        validate_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def _ensure_dirs(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)

    def new_temp_file(self) -> tuple[int, Path]:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, prefix="incoming-")
        return fd, Path(name)

    def put_chunks(self, chunks: Iterable[bytes]) -> StoredArtifact:
        fd, temp = self.new_temp_file()
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            return self._commit(temp, digest.hexdigest(), size)
        finally:
            temp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> StoredArtifact:
        return self.put_chunks([data])

    def put_file(self, path: Path) -> StoredArtifact:
        """Copy a file the caller made (a model bundle, a report) into the store."""
        with open(path, "rb") as handle:
            return self.put_chunks(iter(lambda: handle.read(CHUNK_SIZE), b""))

    def put_hashed_file(self, path: Path, *, sha256: str, size: int) -> StoredArtifact:
        """Adopt a file whose hash was computed while it was written (an upload). It is linked, not copied."""
        validate_sha256(sha256)
        target = self._path(sha256)
        if target.exists():
            return StoredArtifact(sha256=sha256, size=size)
        fd, temp = self.new_temp_file()
        os.close(fd)
        temp.unlink()
        try:
            try:
                os.link(path, temp)
            except OSError:
                shutil.copyfile(path, temp)
            return self._commit(temp, sha256, size)
        finally:
            temp.unlink(missing_ok=True)

    def _commit(self, temp: Path, sha256: str, size: int) -> StoredArtifact:
        target = self._path(sha256)
        if not target.exists():
            self._ensure_dirs(target)
            os.chmod(temp, 0o444)
            os.replace(temp, target)
        return StoredArtifact(sha256=sha256, size=size)

    def verified_path(self, sha256: str) -> Path:
        """The file's path, after checking that its content still hashes to its name."""
        target = self._path(sha256)
        if not target.exists():
            raise ArtifactNotFound(f"artifact {sha256[:12]}… is not in the store")
        actual, _ = hash_file(target)
        if actual != sha256:
            raise ArtifactIntegrityError(sha256, actual)
        return target

    @contextmanager
    def open_verified(self, sha256: str) -> Iterator[BinaryIO]:
        with open(self.verified_path(sha256), "rb") as handle:
            yield handle

    def exists(self, sha256: str) -> bool:
        try:
            return self._path(sha256).exists()
        except ArtifactNotFound:
            return False

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)


def get_artifact_store() -> LocalArtifactStore:
    return LocalArtifactStore(Path(settings.ARTIFACT_ROOT))
