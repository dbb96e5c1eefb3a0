from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from apps.core.models import Membership
from apps.datasets.models import Dataset, DatasetVersion
from apps.datasets.services import dataset_version_profile
from tests.conftest import SMALL_CLASSIFICATION_CSV
from tests.factories import DatasetFactory, ProjectFactory

pytestmark = pytest.mark.django_db


def login(user: object, **kwargs: object) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def test_pages_require_login(dataset: Dataset) -> None:
    for url in ["/datasets/", f"/datasets/{dataset.pk}/", f"/datasets/{dataset.pk}/compare/"]:
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(
    ("role", "visible"), [("owner", True), ("member", True), ("viewer", True), ("outsider", False)]
)
def test_list_and_detail_by_role(
    request: pytest.FixtureRequest, ready_dataset_version: DatasetVersion, role: str, visible: bool
) -> None:
    client = login(request.getfixturevalue(role))
    dataset = ready_dataset_version.dataset
    listing = client.get("/datasets/").content.decode()
    assert (dataset.get_absolute_url() in listing) is visible
    detail = client.get(dataset.get_absolute_url())
    assert detail.status_code == (200 if visible else 404)
    for suffix in ["compare/", "versions/1/status/", "versions/1/download/"]:
        assert client.get(f"/datasets/{dataset.pk}/{suffix}").status_code == (200 if visible else 404), suffix


def test_detail_shows_schema_validation_and_charts(ready_dataset_version: DatasetVersion, viewer: object) -> None:
    page = login(viewer).get(ready_dataset_version.get_absolute_url()).content.decode()
    assert 'data-testid="schema-table"' in page and 'data-testid="validation-report"' in page
    assert page.count('class="plot"') == 3, "one chart per column"
    assert "/static/vendor/plotly/plotly.min" in page and "cdn" not in page.lower()
    assert 'data-testid="upload-form"' not in page, "viewers cannot upload"
    assert f'action="/datasets/{ready_dataset_version.dataset_id}/rules/"' not in page


def test_editor_sees_upload_and_rules_forms(ready_dataset_version: DatasetVersion, member: object) -> None:
    page = login(member).get(ready_dataset_version.get_absolute_url()).content.decode()
    assert 'data-testid="upload-form"' in page and "Save rules" in page


def test_user_data_cannot_break_out_of_the_figure_script(
    dataset: Dataset, member: object, make_dataset_version: object
) -> None:
    evil = "</script><script>alert(1)</script>"
    version = make_dataset_version(dataset, f'"{evil}",n\na,1\nb,2\n'.encode())
    page = login(member).get(version.get_absolute_url()).content.decode()
    assert "<script>alert(1)" not in page
    assert re.search(r"\\u003c\\u002fscript\\u003e", page, re.IGNORECASE), "escaped inside the figure JSON"


def test_pending_version_polls_and_reloads_when_done(
    dataset: Dataset, member: object, make_dataset_version: object, django_capture_on_commit_callbacks: object
) -> None:
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, profile=False)
    client = login(member)
    page = client.get(version.get_absolute_url()).content.decode()
    assert f'hx-get="/datasets/{dataset.pk}/versions/1/status/"' in page and 'hx-trigger="every 2s"' in page
    assert "Waiting for a worker" in page
    polled = client.get(f"/datasets/{dataset.pk}/versions/1/status/", HTTP_HX_REQUEST="true")
    assert "HX-Refresh" not in polled
    dataset_version_profile(version_id=version.pk)
    done = client.get(f"/datasets/{dataset.pk}/versions/1/status/", HTTP_HX_REQUEST="true")
    assert done["HX-Refresh"] == "true" and "hx-trigger" not in done.content.decode()
    assert "validated in" in done.content.decode()


def test_create_dataset_with_a_first_version(
    project: object, member: object, django_capture_on_commit_callbacks: object
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = login(member).post(
            "/datasets/new/",
            {"project": project.pk, "name": "Flowers", "file": SimpleUploadedFile("f.csv", SMALL_CLASSIFICATION_CSV)},
        )
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/datasets/{dataset.pk}/?version=1"
    assert dataset.versions.get().status == "ready"


def test_create_with_a_bad_file_creates_nothing(project: object, member: object) -> None:
    response = login(member).post(
        "/datasets/new/", {"project": project.pk, "name": "Broken", "file": SimpleUploadedFile("b.csv", b"a,b\n")}
    )
    assert response.status_code == 400
    assert "b.csv: the file has a header but no data rows" in response.content.decode()
    assert not Dataset.objects.exists()


def test_create_refuses_a_lookalike_name_and_viewers(project: object, member: object, viewer: object) -> None:
    DatasetFactory(project=project, name="Flowers")
    response = login(member).post("/datasets/new/", {"project": project.pk, "name": "FLOWERS"})
    assert response.status_code == 400 and "differs only in case" in response.content.decode()
    assert login(viewer).post("/datasets/new/", {"project": project.pk, "name": "Mine"}).status_code == 403
    elsewhere = ProjectFactory()
    Membership.objects.create(project=elsewhere, user=viewer, role="editor")
    refused = login(viewer).post("/datasets/new/", {"project": project.pk, "name": "Mine"})
    assert refused.status_code == 400 and "Select a valid choice" in refused.content.decode()
    assert Dataset.objects.count() == 1
    Membership.objects.filter(project=elsewhere).delete()
    assert "You need the editor role" in login(viewer).get("/datasets/").content.decode()


def test_upload_in_the_ui(dataset: Dataset, member: object, viewer: object, outsider: object) -> None:
    url = f"/datasets/{dataset.pk}/upload/"
    assert login(viewer).post(url, {"file": SimpleUploadedFile("a.csv", b"a\n1\n")}).status_code == 403
    assert login(outsider).post(url, {"file": SimpleUploadedFile("a.csv", b"a\n1\n")}).status_code == 404
    assert not DatasetVersion.objects.exists()
    client = login(member)
    first = client.post(url, {"file": SimpleUploadedFile("a.csv", b"a\n1\n")})
    assert first.status_code == 302 and first["Location"].endswith("?version=1")
    again = client.post(url, {"file": SimpleUploadedFile("b.csv", b"a\n1\n")}, follow=True)
    assert "identical to version 1" in again.content.decode() and DatasetVersion.objects.count() == 1
    bad = client.post(url, {"file": SimpleUploadedFile("pic.csv", b"\x89PNG\r\n\x1a\n....")})
    assert bad.status_code == 400 and "its content is a PNG image" in bad.content.decode()


def test_upload_checks_csrf_after_parsing(dataset: Dataset, member: object) -> None:
    client = login(member, enforce_csrf_checks=True)
    response = client.post(f"/datasets/{dataset.pk}/upload/", {"file": SimpleUploadedFile("a.csv", b"a\n1\n")})
    assert response.status_code == 403
    assert not DatasetVersion.objects.exists()
    page = client.get(dataset.get_absolute_url()).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(
        f"/datasets/{dataset.pk}/upload/",
        {"file": SimpleUploadedFile("a.csv", b"a\n1\n"), "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302 and DatasetVersion.objects.count() == 1


def test_rules_editor(dataset: Dataset, member: object, viewer: object) -> None:
    url = f"/datasets/{dataset.pk}/rules/"
    assert login(viewer).post(url, {"rules": "{}"}).status_code == 403
    bad_json = login(member).post(url, {"rules": "{not json"})
    assert bad_json.status_code == 400 and "Not valid JSON" in bad_json.content.decode()
    bad_rule = login(member).post(url, {"rules": '{"columns": {"age": {"min": 5, "max": 1}}}'})
    assert bad_rule.status_code == 400 and "columns.age.min: is greater than max" in bad_rule.content.decode()
    saved = login(member).post(url, {"rules": '{"target": "species"}'})
    assert saved.status_code == 302
    dataset.refresh_from_db()
    assert dataset.rules == {"target": "species"}


def test_revalidate_in_the_ui(ready_dataset_version: DatasetVersion, member: object, viewer: object) -> None:
    url = f"/datasets/{ready_dataset_version.dataset_id}/versions/1/revalidate/"
    assert login(viewer).post(url).status_code == 403
    assert login(member).post(url).status_code == 302
    ready_dataset_version.refresh_from_db()
    assert ready_dataset_version.status == "pending"


def test_download_in_the_ui(ready_dataset_version: DatasetVersion, viewer: object) -> None:
    response = login(viewer).get(f"/datasets/{ready_dataset_version.dataset_id}/versions/1/download/")
    assert b"".join(response.streaming_content) == SMALL_CLASSIFICATION_CSV
    assert response["Content-Disposition"] == 'attachment; filename="flowers.csv"'


def test_compare_versions(dataset: Dataset, member: object, make_dataset_version: object) -> None:
    make_dataset_version(dataset, b"a,b,kind\n1,2,x\n3,4,y\n5,6,x\n")
    make_dataset_version(dataset, b"a,kind,c\n1.5,x,7\n2.5,z,8\n")
    client = login(member)
    empty = client.get(f"/datasets/{dataset.pk}/compare/?a=1&b=1").content.decode()
    assert "same columns and types" in empty
    page = client.get(f"/datasets/{dataset.pk}/compare/").content.decode()
    assert "Schema: v1 → v2" in page
    for change in ("added", "removed", "type changed"):
        assert f">{change}</span>" in page
    assert page.count('class="plot"') == 2, "one overlay per column in both versions"
    assert client.get(f"/datasets/{dataset.pk}/compare/?a=1&b=9").status_code == 404


def test_compare_needs_two_versions(dataset: Dataset, member: object) -> None:
    page = login(member).get(f"/datasets/{dataset.pk}/compare/").content.decode()
    assert "Comparing needs two ready versions" in page


def test_list_search_pagination_and_empty_states(project: object, member: object) -> None:
    client = login(member)
    assert "No datasets yet. Create one with the form" in client.get("/datasets/").content.decode()
    for index in range(30):
        DatasetFactory(project=project, name=f"table {index:02d}")
    first = client.get("/datasets/").content.decode()
    assert "Page 1 of 2" in first and "table 00" in first and "table 29" not in first
    assert "table 29" in client.get("/datasets/?page=2").content.decode()
    found = client.get("/datasets/?q=TABLE%2007").content.decode()
    assert "table 07" in found and "table 08" not in found
    assert "No dataset matches your search" in client.get("/datasets/?q=nothing").content.decode()


def test_list_page_query_count_is_pinned(
    project: object, member: object, make_dataset_version: object, django_assert_max_num_queries: object
) -> None:
    client = login(member)
    for index in range(3):
        make_dataset_version(DatasetFactory(project=project), f"a\n{index}\n".encode(), profile=False)
    with django_assert_max_num_queries(10):
        client.get("/datasets/")
    other = ProjectFactory()
    for index in range(22):
        make_dataset_version(DatasetFactory(project=project if index % 2 else other), f"b\n{index}\n".encode())
    with django_assert_max_num_queries(10):
        assert client.get("/datasets/").status_code == 200


def test_project_page_has_a_datasets_section(ready_dataset_version: DatasetVersion, viewer: object) -> None:
    project = ready_dataset_version.dataset.project
    page = login(viewer).get(f"/projects/{project.slug}/").content.decode()
    assert 'data-testid="project-datasets"' in page and ready_dataset_version.dataset.get_absolute_url() in page


def test_navigation_links_to_datasets(member: object) -> None:
    page = login(member).get("/datasets/").content.decode()
    assert re.search(
        r'<a class="nav-link active" href="/datasets/" aria-current="page"><i class="bi bi-table"></i> Datasets', page
    )


@pytest.mark.parametrize(
    ("role", "allowed"), [("owner", True), ("member", True), ("viewer", False), ("outsider", False)]
)
def test_every_page_that_writes_by_role(
    request: pytest.FixtureRequest, ready_dataset_version: DatasetVersion, role: str, allowed: bool
) -> None:
    user = request.getfixturevalue(role)
    client = login(user)
    dataset = ready_dataset_version.dataset
    denied = 403 if role == "viewer" else 404
    upload = client.post(f"/datasets/{dataset.pk}/upload/", {"file": SimpleUploadedFile("n.csv", b"a\n1\n")})
    rules = client.post(f"/datasets/{dataset.pk}/rules/", {"rules": '{"target": "species"}'})
    revalidate = client.post(f"/datasets/{dataset.pk}/versions/1/revalidate/")
    for response in (upload, rules, revalidate):
        assert response.status_code == (302 if allowed else denied)
    create = client.post("/datasets/new/", {"project": dataset.project_id, "name": f"by {role}"})
    assert create.status_code == (302 if allowed else 403), "without an editor role anywhere, creating is refused"
    assert DatasetVersion.objects.count() == (2 if allowed else 1)
    assert Dataset.objects.count() == (2 if allowed else 1)
