"""Every kind of bad upload gets a 4xx naming the problem and the field, and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.core.models import Job
from apps.datasets.models import Dataset, DatasetVersion
from tests.conftest import client_for
from tests.datasets.helpers import parquet_bytes, stored_files

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 100


def good_parquet(tmp_path: Path) -> bytes:
    return parquet_bytes(pd.DataFrame({"a": list(range(200)), "b": ["x"] * 200}), tmp_path)


BAD_UPLOADS = [
    ("empty.csv", b"", "The submitted file is empty."),
    ("blank.csv", b"\n\n  \n", "blank.csv: the file is empty"),
    ("header.csv", b"a,b,c\n", "header.csv: the file has a header but no data rows"),
    ("ragged.csv", b"a,b,c\n1,2,3\n4,5\n", "ragged.csv: line 3 has 2 fields but the header has 3"),
    ("latin1.csv", "name,city\nJosé,Zürich\n".encode("latin-1"), "latin1.csv: line 2 is not UTF-8 text"),
    ("dupes.csv", b"a,b,a\n1,2,3\n", "dupes.csv: duplicate column names: 'a'"),
    ("image.csv", PNG, "image.csv: the file is named .csv but its content is a PNG image, not CSV text"),
    ("text.parquet", b"a,b\n1,2\n", "text.parquet: the file is named .parquet but its content is text"),
    ("corrupt.parquet", b"PAR1" + b"\x13" * 300 + b"PAR1", "corrupt.parquet: the Parquet file is corrupt or truncated"),
    ("sheet.xlsx", b"PK\x03\x04", "sheet.xlsx: unsupported file type ('.xlsx'); upload a .csv or .parquet file"),
    ("noextension", b"a,b\n1,2\n", "noextension: unsupported file type (no extension)"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload_via_the_api(
    dataset: Dataset, member: object, artifact_root: Path, name: str, content: bytes, message: str
) -> None:
    response = client_for(member).post(
        f"/api/v1/datasets/{dataset.pk}/versions/", {"file": SimpleUploadedFile(name, content)}, format="multipart"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["file"]
    assert response.json()["file"][0].startswith(message)
    assert not DatasetVersion.objects.exists() and not Job.objects.exists()
    assert stored_files(artifact_root) == [], "no stored file and no temporary file is left behind"


def test_truncated_parquet_is_refused(dataset: Dataset, member: object, artifact_root: Path, tmp_path: Path) -> None:
    data = good_parquet(tmp_path)
    response = client_for(member).post(
        f"/api/v1/datasets/{dataset.pk}/versions/",
        {"file": SimpleUploadedFile("cut.parquet", data[: len(data) - 20])},
        format="multipart",
    )
    assert response.status_code == 400 and "corrupt or truncated" in response.json()["file"][0]
    assert stored_files(artifact_root) == []


def test_upload_over_the_limit_is_413(dataset: Dataset, member: object, artifact_root: Path, settings: object) -> None:
    settings.MAX_UPLOAD_BYTES = 1000
    response = client_for(member).post(
        f"/api/v1/datasets/{dataset.pk}/versions/",
        {"file": SimpleUploadedFile("big.csv", b"a\n" + b"1\n" * 2000)},
        format="multipart",
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "file: the upload is larger than the limit of 1,000 bytes"
    assert not DatasetVersion.objects.exists()
    assert stored_files(artifact_root) == []


def test_the_file_field_is_required(dataset: Dataset, member: object) -> None:
    response = client_for(member).post(f"/api/v1/datasets/{dataset.pk}/versions/", {}, format="multipart")
    assert response.status_code == 400 and response.json() == {"file": ["No file was submitted."]}


def raw_multipart(file_name: str, content: bytes) -> tuple[bytes, str]:
    boundary = "----boundary7MA4YWxkTrZu0gW"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
            f"Content-Type: text/csv\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("file_name", ["../../etc/cron.d/evil.csv", "..\\..\\evil.csv", "/tmp/evil.csv"])
def test_path_separators_in_the_file_name_never_reach_the_filesystem(
    dataset: Dataset, member: object, artifact_root: Path, file_name: str
) -> None:
    body, content_type = raw_multipart(file_name, b"a,b\n1,2\n")
    response = client_for(member).post(f"/api/v1/datasets/{dataset.pk}/versions/", body, content_type=content_type)
    assert response.status_code == 201, response.content
    assert response.json()["file_name"] == "evil.csv"
    version = DatasetVersion.objects.get()
    assert [p.name for p in stored_files(artifact_root)] == [version.sha256]
    assert not (artifact_root.parent / "etc").exists()


def test_a_dotdot_file_name_is_refused(dataset: Dataset, member: object, artifact_root: Path) -> None:
    body, content_type = raw_multipart("..", b"a,b\n1,2\n")
    response = client_for(member).post(f"/api/v1/datasets/{dataset.pk}/versions/", body, content_type=content_type)
    assert response.status_code == 400 and "file" in response.json()
    assert stored_files(artifact_root) == []


def test_oversize_upload_in_the_ui_is_413_not_500(
    dataset: Dataset, member: object, artifact_root: Path, settings: object
) -> None:
    settings.MAX_UPLOAD_BYTES = 1000
    client = Client()
    client.force_login(member)
    response = client.post(f"/datasets/{dataset.pk}/upload/", {"file": SimpleUploadedFile("big.csv", b"1\n" * 2000)})
    assert response.status_code == 413
    assert "larger than the limit of 1,000 bytes" in response.content.decode()
    create = client.post(
        "/datasets/new/",
        {"project": dataset.project_id, "name": "New", "file": SimpleUploadedFile("big.csv", b"1\n" * 2000)},
    )
    assert create.status_code == 413 and "larger than the limit" in create.content.decode()
    assert Dataset.objects.count() == 1 and not DatasetVersion.objects.exists()
    assert stored_files(artifact_root) == []
