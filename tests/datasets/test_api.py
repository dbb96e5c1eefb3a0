from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.core.models import AuditEntry, Membership
from apps.datasets.models import Dataset, DatasetSplit, DatasetVersion
from tests.conftest import SMALL_CLASSIFICATION_CSV, client_for
from tests.datasets.helpers import tamper
from tests.factories import DatasetFactory, ProjectFactory

pytestmark = pytest.mark.django_db

ROLES = ["owner", "member", "viewer", "outsider"]


def as_user(request: pytest.FixtureRequest, role: str) -> object:
    return client_for(request.getfixturevalue(role))


def upload(client: object, dataset: Dataset, content: bytes, name: str = "data.csv") -> object:
    return client.post(
        f"/api/v1/datasets/{dataset.pk}/versions/", {"file": SimpleUploadedFile(name, content)}, format="multipart"
    )


# Datasets


@pytest.mark.parametrize(
    ("role", "visible"), [("owner", True), ("member", True), ("viewer", True), ("outsider", False)]
)
def test_list_and_retrieve(request: pytest.FixtureRequest, dataset: Dataset, role: str, visible: bool) -> None:
    DatasetFactory(project=ProjectFactory(), name="elsewhere")
    client = as_user(request, role)
    names = [d["name"] for d in client.get("/api/v1/datasets/").json()["results"]]
    assert names == ([dataset.name] if visible else [])
    response = client.get(f"/api/v1/datasets/{dataset.pk}/")
    assert response.status_code == (200 if visible else 404)


@pytest.mark.parametrize(("role", "status"), [("owner", 201), ("member", 201), ("viewer", 403), ("outsider", 400)])
def test_create(request: pytest.FixtureRequest, project: object, role: str, status: int) -> None:
    response = as_user(request, role).post(
        "/api/v1/datasets/",
        {"project": project.slug, "name": "Churn", "rules": {"target": "churned"}},
        format="json",
    )
    assert response.status_code == status, response.json()
    if status == 201:
        body = response.json()
        assert body["name"] == "Churn" and body["rules"] == {"target": "churned"} and body["version_count"] == 0
        assert body["latest_version"] is None and body["project"] == project.slug
    else:
        assert not Dataset.objects.exists()
    if role == "outsider":
        # Same answer as for a project that does not exist: an outsider learns nothing.
        assert response.json() == {"project": [f"Object with slug={project.slug} does not exist."]}


@pytest.mark.parametrize("name", ["churn", "CHURN", "Ｃｈｕｒｎ", "Ch%75rn"])
def test_create_refuses_a_name_that_only_looks_different(project: object, owner: object, name: str) -> None:
    client = client_for(owner)
    assert (
        client.post("/api/v1/datasets/", {"project": project.slug, "name": "Churn"}, format="json").status_code == 201
    )
    response = client.post("/api/v1/datasets/", {"project": project.slug, "name": name}, format="json")
    assert response.status_code == 400
    assert "differs only in case, form or encoding" in response.json()["name"][0]
    assert Dataset.objects.count() == 1


def test_a_name_too_long_once_case_folded_is_a_400_naming_the_field(project: object, owner: object) -> None:
    response = client_for(owner).post("/api/v1/datasets/", {"project": project.slug, "name": "ß" * 100}, format="json")
    assert response.status_code == 400
    assert "limit is 100" in response.json()["name"][0]
    assert not Dataset.objects.exists()


@pytest.mark.parametrize(("role", "status"), [("owner", 200), ("member", 200), ("viewer", 403), ("outsider", 404)])
def test_patch_rules(request: pytest.FixtureRequest, dataset: Dataset, role: str, status: int) -> None:
    rules = {"columns": {"age": {"min": 0, "max": 120, "blocking": True}}, "max_duplicate_rate": 0.01}
    response = as_user(request, role).patch(f"/api/v1/datasets/{dataset.pk}/", {"rules": rules}, format="json")
    assert response.status_code == status
    dataset.refresh_from_db()
    assert (dataset.rules != {}) is (status == 200)
    if status == 200:
        assert response.json()["rules"]["columns"]["age"] == {"min": 0, "max": 120, "blocking": True}


def test_patch_refuses_malformed_rules(dataset: Dataset, member: object) -> None:
    response = client_for(member).patch(
        f"/api/v1/datasets/{dataset.pk}/", {"rules": {"columns": {"age": {"maximum": 3}}}}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {
        "rules": ["columns.age.maximum: unknown rule; use allowed, blocking, max, max_null_rate, min"]
    }
    assert client_for(member).put(f"/api/v1/datasets/{dataset.pk}/", {}, format="json").status_code == 405


def test_search_and_project_filter(project: object, member: object) -> None:
    other = ProjectFactory()
    Membership.objects.create(project=other, user=member, role="viewer")
    DatasetFactory(project=project, name="Iris flowers")
    DatasetFactory(project=project, name="Wine", description="Chemistry of wines")
    DatasetFactory(project=other, name="IRIS copy")
    client = client_for(member)

    def names(query: str) -> list[str]:
        return sorted(d["name"] for d in client.get(f"/api/v1/datasets/{query}").json()["results"])

    assert names("?search=iris") == ["IRIS copy", "Iris flowers"]
    assert names("?search=ＩＲＩＳ") == ["IRIS copy", "Iris flowers"]
    assert names("?search=chemistry") == ["Wine"]
    assert names(f"?project={other.slug}") == ["IRIS copy"]
    assert names(f"?project={project.slug}&search=iris") == ["Iris flowers"]


def test_list_query_count_does_not_grow_with_datasets(
    project: object, owner: object, make_dataset_version: object, django_assert_max_num_queries: object
) -> None:
    client = client_for(owner)
    for index in range(3):
        make_dataset_version(DatasetFactory(project=project), f"a\n{index}\n".encode(), profile=False)
    with django_assert_max_num_queries(4):
        small = client.get("/api/v1/datasets/").json()
    for index in range(20):
        make_dataset_version(DatasetFactory(project=project), f"b\n{index}\n".encode(), profile=False)
    with django_assert_max_num_queries(4):
        large = client.get("/api/v1/datasets/").json()
    assert small["count"] == 3 and large["count"] == 23
    assert all(d["latest_version"]["number"] == 1 and d["version_count"] == 1 for d in large["results"])


# Versions


@pytest.mark.parametrize(("role", "status"), [("owner", 201), ("member", 201), ("viewer", 403), ("outsider", 404)])
def test_upload(
    request: pytest.FixtureRequest, dataset: Dataset, role: str, status: int, django_capture_on_commit_callbacks: object
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(as_user(request, role), dataset, SMALL_CLASSIFICATION_CSV, "flowers.csv")
    assert response.status_code == status
    if status == 201:
        body = response.json()
        assert body["number"] == 1 and body["file_name"] == "flowers.csv" and body["row_count"] == 60
        assert body["status"] == "pending", "the response is sent before the worker profiles it"
        assert body["job"]["status"] == "queued"
        assert DatasetVersion.objects.get().status == "ready"
    else:
        assert not DatasetVersion.objects.exists()


def test_identical_upload_answers_200_with_the_same_version(dataset: Dataset, member: object) -> None:
    client = client_for(member)
    first = upload(client, dataset, SMALL_CLASSIFICATION_CSV)
    second = upload(client, dataset, SMALL_CLASSIFICATION_CSV, "copy.csv")
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"] and DatasetVersion.objects.count() == 1


@pytest.mark.parametrize(("role", "status"), [("owner", 200), ("member", 200), ("viewer", 200), ("outsider", 404)])
def test_version_reads(
    request: pytest.FixtureRequest, ready_dataset_version: DatasetVersion, role: str, status: int
) -> None:
    client = as_user(request, role)
    version = ready_dataset_version
    listing = client.get(f"/api/v1/datasets/{version.dataset_id}/versions/")
    assert listing.status_code == status
    base = f"/api/v1/dataset-versions/{version.pk}/"
    for suffix in ["", "profile/", "validation/", "download/", "splits/"]:
        assert client.get(base + suffix).status_code == status, suffix
    if status != 200:
        return
    assert listing.json()["results"][0]["number"] == 1
    detail = client.get(base).json()
    assert detail["status"] == "ready" and detail["schema"]["columns"][2]["type"] == "categorical"
    assert client.get(base + "profile/").json()["columns"]["species"]["top"][0]["count"] == 20
    assert client.get(base + "validation/").json()["status"] in {"pass", "warn"}
    download = client.get(base + "download/")
    assert b"".join(download.streaming_content) == SMALL_CLASSIFICATION_CSV
    assert download["Content-Disposition"] == 'attachment; filename="flowers.csv"'


@pytest.mark.parametrize(("role", "status"), [("owner", 201), ("member", 201), ("viewer", 403), ("outsider", 404)])
def test_make_a_split(
    request: pytest.FixtureRequest, ready_dataset_version: DatasetVersion, role: str, status: int
) -> None:
    url = f"/api/v1/dataset-versions/{ready_dataset_version.pk}/splits/"
    payload = {"test_size": 0.25, "seed": 7, "stratify": "species"}
    response = as_user(request, role).post(url, payload, format="json")
    assert response.status_code == status
    if status == 201:
        body = response.json()
        assert (body["train_count"], body["test_count"], body["stratified"]) == (45, 15, True)
        again = as_user(request, role).post(url, payload, format="json")
        assert again.status_code == 200 and again.json()["id"] == body["id"]
        assert as_user(request, role).get(url).json()["count"] == 1
    else:
        assert not DatasetSplit.objects.exists()


def test_split_errors_name_the_field(ready_dataset_version: DatasetVersion, member: object) -> None:
    url = f"/api/v1/dataset-versions/{ready_dataset_version.pk}/splits/"
    response = client_for(member).post(url, {"stratify": "ghost"}, format="json")
    assert response.status_code == 400 and "ghost" in response.json()["stratify"][0]
    response = client_for(member).post(url, {"test_size": 2}, format="json")
    assert response.status_code == 400 and "test_size" in response.json(), response.json()
    assert not DatasetSplit.objects.exists()


@pytest.mark.parametrize(("role", "status"), [("owner", 202), ("member", 202), ("viewer", 403), ("outsider", 404)])
def test_revalidate(
    request: pytest.FixtureRequest, ready_dataset_version: DatasetVersion, role: str, status: int
) -> None:
    response = as_user(request, role).post(f"/api/v1/dataset-versions/{ready_dataset_version.pk}/revalidate/")
    assert response.status_code == status
    ready_dataset_version.refresh_from_db()
    assert ready_dataset_version.status == ("pending" if status == 202 else "ready")


def test_download_of_a_tampered_file_is_refused_and_audited(
    ready_dataset_version: DatasetVersion, viewer: object
) -> None:
    tamper(ready_dataset_version.sha256)
    response = client_for(viewer).get(f"/api/v1/dataset-versions/{ready_dataset_version.pk}/download/")
    assert response.status_code == 409
    assert "failed hash verification" in response.json()["detail"]
    entry = AuditEntry.objects.get(action="artifact.integrity_failed")
    assert entry.actor == viewer and entry.object_id == str(ready_dataset_version.pk)
