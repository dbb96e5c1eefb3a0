from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from apps.core.artifacts import ArtifactIntegrityError, ArtifactNotFound, get_artifact_store
from apps.core.models import AuditEntry
from apps.core.services import artifact_verified_path


def test_put_is_content_addressed_and_deduplicated(artifact_root: Path) -> None:
    store = get_artifact_store()
    first = store.put_bytes(b"hello world")
    second = store.put_chunks([b"hello ", b"world"])
    assert first == second
    assert first.sha256 == hashlib.sha256(b"hello world").hexdigest()
    assert first.size == 11
    assert store.verified_path(first.sha256).read_bytes() == b"hello world"
    files = [p for p in artifact_root.rglob("*") if p.is_file()]
    assert files == [store.verified_path(first.sha256)], "one stored file, and no temp files left behind"


def test_tampered_artifact_is_refused(artifact_root: Path) -> None:
    store = get_artifact_store()
    stored = store.put_bytes(b"model weights")
    path = store.verified_path(stored.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(b"evil weights")
    with pytest.raises(ArtifactIntegrityError, match="failed verification"):
        store.verified_path(stored.sha256)
    with pytest.raises(ArtifactIntegrityError), store.open_verified(stored.sha256):
        pass


@pytest.mark.django_db
def test_integrity_failure_reaches_the_audit_log(project: object) -> None:
    store = get_artifact_store()
    stored = store.put_bytes(b"abc")
    path = store.verified_path(stored.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(b"abd")
    with pytest.raises(ArtifactIntegrityError):
        artifact_verified_path(sha256=stored.sha256, project=project, obj=project)
    entry = AuditEntry.objects.get(action="artifact.integrity_failed")
    assert entry.project == project
    assert entry.after["expected_sha256"] == stored.sha256


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a" * 63, "A" * 64, "", "/tmp/x"])
def test_no_caller_supplied_path_reaches_the_filesystem(bad: str) -> None:
    store = get_artifact_store()
    with pytest.raises(ArtifactNotFound):
        store.verified_path(bad)
    assert store.exists(bad) is False


def test_missing_artifact_is_not_found() -> None:
    with pytest.raises(ArtifactNotFound):
        get_artifact_store().verified_path("0" * 64)


def test_put_file_copies_and_verifies(tmp_path: Path) -> None:
    source = tmp_path / "bundle.zip"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    stored = get_artifact_store().put_file(source)
    assert stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert stored.size == source.stat().st_size
