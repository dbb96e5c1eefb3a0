from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.datasets.models import Dataset, DatasetVersion

pytestmark = pytest.mark.django_db


def test_load_demo_datasets_is_idempotent(
    project: object, owner: object, django_capture_on_commit_callbacks: object
) -> None:
    project.created_by = owner
    project.save(update_fields=["created_by"])
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("load_demo_datasets", project=project.slug, stdout=out)
    assert sorted(Dataset.objects.values_list("name", flat=True)) == [
        "breast_cancer",
        "diabetes",
        "digits",
        "iris",
        "wine",
    ]
    assert "iris: loaded as iris v1 (150 rows" in out.getvalue()
    iris = DatasetVersion.objects.get(dataset__name="iris")
    assert iris.status == "ready" and iris.created_by == owner
    target = iris.profile["columns"]["target"]
    assert target["type"] == "categorical"
    assert {item["value"] for item in target["top"]} == {"setosa", "versicolor", "virginica"}
    digits = DatasetVersion.objects.get(dataset__name="digits")
    assert digits.column_count == 65 and digits.profile["columns"]["target"]["type"] == "integer"

    again = StringIO()
    call_command("load_demo_datasets", project=project.slug, stdout=again)
    assert Dataset.objects.count() == 5 and DatasetVersion.objects.count() == 5
    assert "iris: already loaded as iris v1" in again.getvalue()


def test_load_demo_datasets_needs_the_project(db: None) -> None:
    with pytest.raises(CommandError, match="No project with slug 'demo'"):
        call_command("load_demo_datasets")
