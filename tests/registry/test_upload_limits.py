"""Uploaded archives are measured before anything unpacks them: a zip bomb or an oversize bundle is refused
with nothing stored."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from django.test import Client, override_settings

from apps.registry.models import ModelVersion, RegisteredModel
from tests.conftest import client_for
from tests.registry.test_registration import stored_files, upload

pytestmark = pytest.mark.django_db


def assert_nothing_stored(artifact_root: Path) -> None:
    assert ModelVersion.objects.count() == 0 and RegisteredModel.objects.count() == 0
    assert stored_files(artifact_root) == []
    assert list((artifact_root / "tmp").iterdir()) == []


def archive(target: Path, *, megabytes: int, compression: int) -> Path:
    """A zip that looks like a model bundle, with one member of `megabytes` MiB of zeros."""
    zeros = bytes(1024**2)
    with zipfile.ZipFile(target, "w", compression, compresslevel=1) as bundle:
        bundle.writestr("MLmodel.json", '{"format_version": 1, "flavor": "sklearn", "files": {}}')
        with bundle.open("model.skops", "w") as member:
            for _ in range(megabytes):
                member.write(zeros)
    return target


def test_a_zip_bomb_is_refused_before_it_is_unpacked(project, member, tmp_path, artifact_root) -> None:
    bomb = archive(tmp_path / "bomb.zip", megabytes=200, compression=zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 1024**2
    response = upload(client_for(member), project, bomb)
    assert response.status_code == 400, response.content
    message = response.json()["file"][0]
    assert "zip bomb" in message and "the limit is 100" in message
    assert_nothing_stored(artifact_root)


@override_settings(MAX_UPLOAD_UNPACKED_BYTES=1024**2)
def test_an_archive_that_unpacks_past_the_limit_is_a_413(project, member, tmp_path, artifact_root) -> None:
    path = archive(tmp_path / "big.zip", megabytes=2, compression=zipfile.ZIP_STORED)
    response = upload(client_for(member), project, path)
    assert response.status_code == 413, response.content
    assert response.json()["detail"] == "file: the archive unpacks to more than the limit of 1,048,576 bytes"
    assert_nothing_stored(artifact_root)
    client = Client()
    client.force_login(member)
    with open(path, "rb") as handle:
        page = client.post("/models/register/", {"project": project.pk, "model_name": "iris", "file": handle})
    assert page.status_code == 413 and "unpacks to more than the limit" in page.content.decode()
    assert_nothing_stored(artifact_root)
