from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.core.artifacts import ArtifactIntegrityError, get_artifact_store
from apps.core.choices import JobStatus, ProjectRole
from apps.core.jobs import job_claim, job_progress
from apps.core.models import AuditEntry, Job
from apps.datasets import services
from apps.datasets.models import Dataset, DatasetSplit, DatasetVersion
from tests.conftest import SMALL_CLASSIFICATION_CSV
from tests.datasets.helpers import csv_bytes, parquet_bytes, stored_files, tamper
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


# Datasets


def test_create_audits_and_keeps_canonical_rules(project: object, owner: object) -> None:
    dataset = services.dataset_create(
        project=project, name="  Churn ", actor=owner, rules={"columns": {"age": {"min": 0}}}
    )
    assert dataset.name == "Churn" and dataset.name_key == "churn"
    assert dataset.rules == {"columns": {"age": {"min": 0, "blocking": False}}}
    entry = AuditEntry.objects.get(action="dataset.created")
    assert entry.project == project and entry.actor == owner and entry.after["name"] == "Churn"


@pytest.mark.parametrize("name", ["churn", "CHURN", "Ｃｈｕｒｎ", "Ch%75rn", " Churn  "])
def test_names_differing_only_in_case_form_or_encoding_are_refused(project: object, owner: object, name: str) -> None:
    services.dataset_create(project=project, name="Churn", actor=owner)
    with pytest.raises(ValidationError) as caught:
        services.dataset_create(project=project, name=name, actor=owner)
    assert "differs only in case" in caught.value.message_dict["name"][0]
    assert Dataset.objects.count() == 1


def test_the_same_name_may_live_in_another_project(project: object, owner: object) -> None:
    services.dataset_create(project=project, name="Churn", actor=owner)
    other = MembershipFactory(user=owner, role=ProjectRole.EDITOR).project
    services.dataset_create(project=other, name="churn", actor=owner)
    assert Dataset.objects.count() == 2


@pytest.mark.parametrize(
    ("name", "message"), [("", "needs a name"), ("x" * 101, "limit is 100"), ("a\x00b", "control")]
)
def test_bad_names_are_refused(project: object, owner: object, name: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        services.dataset_create(project=project, name=name, actor=owner)


def test_update_rules_validates_and_audits(dataset: Dataset, owner: object) -> None:
    with pytest.raises(ValidationError) as caught:
        services.dataset_update(dataset=dataset, rules={"columns": {"age": {"min": "zero"}}}, actor=owner)
    assert caught.value.message_dict["rules"] == ["columns.age.min: must be a finite number; got 'zero'"]
    services.dataset_update(dataset=dataset, rules={"target": "label"}, actor=owner)
    services.dataset_update(dataset=dataset, rules={"target": "label"}, actor=owner)
    dataset.refresh_from_db()
    assert dataset.rules == {"target": "label"}
    entries = AuditEntry.objects.filter(action="dataset.updated")
    assert entries.count() == 1, "an unchanged save writes no audit entry"
    assert entries.get().before == {"rules": {}} and entries.get().after == {"rules": {"target": "label"}}


# Versions


def test_upload_is_profiled_and_validated_on_the_worker(
    dataset: Dataset, owner: object, make_dataset_version: object, artifact_root: Path
) -> None:
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, file_name="flowers.csv", actor=owner)
    assert version.status == "ready" and version.number == 1 and version.parent is None
    assert (version.row_count, version.column_count, version.format) == (60, 3, "csv")
    assert [c["name"] for c in version.schema["columns"]] == ["sepal_length", "sepal_width", "species"]
    assert version.profile["columns"]["species"]["type"] == "categorical"
    assert version.validation["status"] in {"pass", "warn"} and version.blocking_failed is False
    job = Job.objects.get(pk=version.job_id)
    assert job.status == JobStatus.SUCCEEDED and job.progress == 1.0 and job.attempts == 1
    assert "read 60 rows × 3 columns" in job.log and "validated in" in job.log
    assert job.object_type == "datasets.datasetversion" and job.object_id == str(version.pk)
    assert get_artifact_store().verified_path(version.sha256).read_bytes() == SMALL_CLASSIFICATION_CSV
    assert [p.name for p in stored_files(artifact_root)] == [version.sha256]
    actions = list(AuditEntry.objects.filter(object_id=str(version.pk)).values_list("action", flat=True))
    assert sorted(actions) == ["dataset_version.created", "dataset_version.profiled"]


def test_profiling_waits_for_the_commit(dataset: Dataset, make_dataset_version: object) -> None:
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, profile=False)
    assert version.status == "pending" and version.schema == {}
    assert Job.objects.get(pk=version.job_id).status == JobStatus.QUEUED


def test_identical_content_returns_the_existing_version(
    dataset: Dataset, make_dataset_version: object, artifact_root: Path
) -> None:
    first = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, file_name="a.csv")
    again = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, file_name="renamed.csv")
    assert again.pk == first.pk and again.file_name == "a.csv"
    assert DatasetVersion.objects.count() == 1 and Job.objects.count() == 1
    assert len(stored_files(artifact_root)) == 1


def test_next_version_has_a_parent_and_a_schema_diff(dataset: Dataset, make_dataset_version: object) -> None:
    v1 = make_dataset_version(dataset, b"a,b\n1,x\n2,y\n")
    v2 = make_dataset_version(dataset, b"a,c\nx,1\ny,2\n")
    assert (v2.number, v2.parent_id) == (2, v1.pk)
    checks = {c["check"]: c for c in v2.validation["checks"]}
    assert checks["schema.columns_added"]["message"] == "Columns added since v1: 'c'."
    assert checks["schema.columns_removed"]["status"] == "fail"
    assert checks["schema.type_changed"]["message"] == "Column 'a' changed type from integer to categorical since v1."


def test_schema_is_compared_with_the_nearest_profiled_ancestor(dataset: Dataset, make_dataset_version: object) -> None:
    v1 = make_dataset_version(dataset, b"a\n1\n2\n")
    v2 = make_dataset_version(dataset, b"a\n3\n4\n", profile=False)
    v3 = make_dataset_version(dataset, b"a,b\n5,1\n6,2\n")
    assert v3.parent_id == v2.pk and v2.status == "pending" and v1.status == "ready"
    assert {c["check"]: c for c in v3.validation["checks"]}["schema.columns_added"]["message"].endswith(
        "since v1: 'b'."
    )


def test_parquet_versions(dataset: Dataset, make_dataset_version: object, tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.5, 2.5, None], "label": ["a", "b", "a"]})
    version = make_dataset_version(dataset, parquet_bytes(frame, tmp_path), file_name="frame.parquet")
    assert version.format == "parquet" and version.status == "ready" and version.row_count == 3
    assert version.schema["columns"][0] == {"name": "x", "type": "numeric", "nullable": True, "arrow_type": "double"}


def test_blocking_rule_failure_keeps_the_version_but_flags_it(
    dataset: Dataset, owner: object, make_dataset_version: object
) -> None:
    services.dataset_update(
        dataset=dataset, rules={"columns": {"sepal_length": {"max": 5, "blocking": True}}}, actor=owner
    )
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV)
    assert version.status == "ready" and version.blocking_failed is True
    assert version.validation["status"] == "fail"
    failed = [c for c in version.validation["checks"] if c["status"] == "fail"]
    assert failed[0]["check"] == "column.max" and failed[0]["blocking"] is True


def test_revalidate_applies_the_current_rules(
    dataset: Dataset, owner: object, make_dataset_version: object, django_capture_on_commit_callbacks: object
) -> None:
    services.dataset_update(dataset=dataset, rules={"target": "label"}, actor=owner)
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV)
    assert version.blocking_failed is True, "the target column is missing"
    services.dataset_update(dataset=dataset, rules={"target": "species"}, actor=owner)
    first_job = version.job_id
    with django_capture_on_commit_callbacks(execute=True):
        services.dataset_version_revalidate(version=version, actor=owner)
    version.refresh_from_db()
    assert version.status == "ready" and version.blocking_failed is False and version.job_id != first_job
    assert AuditEntry.objects.filter(action="dataset_version.revalidation_requested").count() == 1


def test_revalidate_refuses_a_version_in_progress(
    dataset: Dataset, owner: object, make_dataset_version: object
) -> None:
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, profile=False)
    with pytest.raises(ValidationError, match="wait until it is ready"):
        services.dataset_version_revalidate(version=version, actor=owner)


def test_profiling_twice_does_the_work_once(dataset: Dataset, make_dataset_version: object) -> None:
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV)
    profiled_at = version.profiled_at
    assert services.dataset_version_profile(version_id=version.pk) is None
    version.refresh_from_db()
    assert version.profiled_at == profiled_at
    assert Job.objects.get(pk=version.job_id).attempts == 1
    assert AuditEntry.objects.filter(action="dataset_version.profiled").count() == 1


def test_a_claim_is_only_taken_over_once_it_is_stale(dataset: Dataset, make_dataset_version: object) -> None:
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, profile=False)
    DatasetVersion.objects.filter(pk=version.pk).update(status="profiling", claimed_at=timezone.now())
    assert services.dataset_version_profile(version_id=version.pk) is None, "a live worker holds the claim"
    stale = timezone.now() - services.STALE_CLAIM_AFTER - timedelta(seconds=1)
    DatasetVersion.objects.filter(pk=version.pk).update(claimed_at=stale)
    assert services.dataset_version_profile(version_id=version.pk).status == "ready"


def test_a_takeover_also_takes_the_dead_workers_job(dataset: Dataset, make_dataset_version: object) -> None:
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, profile=False)
    stale = timezone.now() - services.STALE_CLAIM_AFTER - timedelta(seconds=1)
    DatasetVersion.objects.filter(pk=version.pk).update(status="profiling", claimed_at=stale)
    dead_worker = job_claim(job=version.job, now=stale)
    assert services.dataset_version_profile(version_id=version.pk).status == "ready"
    job = Job.objects.get(pk=version.job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2 and job.started_at > stale
    with pytest.raises(ValidationError, match="taken over|succeeded"):
        job_progress(job=dead_worker, fraction=0.5, message="the dead worker wakes up")


def test_stale_versions_are_queued_again(dataset: Dataset, make_dataset_version: object) -> None:
    lost = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, profile=False)
    fresh = make_dataset_version(dataset, b"a\n1\n", profile=False)
    DatasetVersion.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.dataset_versions_requeue_stale() == 1
    lost.refresh_from_db()
    fresh.refresh_from_db()
    assert lost.status == "ready", "the requeued task ran (eagerly)"
    assert fresh.status == "pending", "a recent upload is left to its own message"


def test_a_tampered_file_fails_profiling_and_is_audited(dataset: Dataset, make_dataset_version: object) -> None:
    version = make_dataset_version(dataset, SMALL_CLASSIFICATION_CSV, profile=False)
    tamper(version.sha256)
    services.dataset_version_profile(version_id=version.pk)
    version.refresh_from_db()
    assert version.status == "failed" and "failed verification" in version.error
    job = Job.objects.get(pk=version.job_id)
    assert job.status == JobStatus.FAILED and "ArtifactIntegrityError" in job.error and job.finished_at
    assert AuditEntry.objects.filter(action="artifact.integrity_failed", object_id=str(version.pk)).exists()
    assert AuditEntry.objects.filter(action="dataset_version.failed", object_id=str(version.pk)).exists()


def test_a_bad_file_leaves_no_row_and_no_stored_file(
    dataset: Dataset, owner: object, tmp_path: Path, artifact_root: Path
) -> None:
    path = tmp_path / "ragged.csv"
    path.write_bytes(b"a,b\n1,2\n3\n")
    with pytest.raises(ValidationError) as caught:
        services.dataset_version_create(dataset=dataset, path=path, file_name="ragged.csv", actor=owner)
    assert caught.value.message_dict["file"] == [
        "ragged.csv: line 3 has 1 field but the header has 2; every row needs the same number of fields"
    ]
    assert not DatasetVersion.objects.exists() and not Job.objects.exists()
    assert stored_files(artifact_root) == []


def test_a_failure_after_storing_removes_the_file(
    dataset: Dataset, owner: object, tmp_path: Path, artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_audit(**kwargs: object) -> None:
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(services, "audit_record", broken_audit)
    path = tmp_path / "ok.csv"
    path.write_bytes(b"a\n1\n")
    with pytest.raises(RuntimeError):
        services.dataset_version_create(dataset=dataset, path=path, file_name="ok.csv", actor=owner)
    assert not DatasetVersion.objects.exists() and not Job.objects.exists()
    assert stored_files(artifact_root) == []


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd.csv", "passwd.csv"),
        ("..\\..\\windows\\data.csv", "data.csv"),
        ("/abs/path/x.parquet", "x.parquet"),
        ("we\x00ird\nname.csv", "weirdname.csv"),
        ("ｆｕｌｌ.csv", "full.csv"),
        ("a" * 300 + ".csv", "a" * 251 + ".csv"),
    ],
)
def test_file_names_are_sanitised(raw: str, clean: str) -> None:
    assert services.sanitize_file_name(raw) == clean


@pytest.mark.parametrize("raw", ["", "..", "../..", "dir/", "..\\"])
def test_unusable_file_names_are_refused(raw: str) -> None:
    with pytest.raises(ValidationError, match="not usable"):
        services.sanitize_file_name(raw)


# Loading and splitting


def test_load_frame_reads_the_verified_file(ready_dataset_version: DatasetVersion) -> None:
    frame = services.dataset_version_load_frame(ready_dataset_version)
    assert list(frame.columns) == ["sepal_length", "sepal_width", "species"] and len(frame) == 60
    assert frame["species"].iloc[:3].tolist() == ["setosa", "versicolor", "virginica"]
    assert services.dataset_version_load_frame(ready_dataset_version, columns=["species"]).shape == (60, 1)


def test_load_frame_refuses_a_tampered_file(ready_dataset_version: DatasetVersion, owner: object) -> None:
    tamper(ready_dataset_version.sha256)
    with pytest.raises(ArtifactIntegrityError):
        services.dataset_version_load_frame(ready_dataset_version, actor=owner)
    entry = AuditEntry.objects.get(action="artifact.integrity_failed")
    assert entry.object_id == str(ready_dataset_version.pk) and entry.actor == owner


def test_split_is_reproducible_and_stored_once(ready_dataset_version: DatasetVersion, owner: object) -> None:
    split = services.dataset_version_split(version=ready_dataset_version, actor=owner)
    assert (split.test_size, split.seed, split.train_count, split.test_count) == (0.2, 42, 48, 12)
    assert split.stratified is False
    again = services.dataset_version_split(version=ready_dataset_version, actor=owner, test_size=0.2, seed=42)
    assert again.pk == split.pk and DatasetSplit.objects.count() == 1
    train, test = services.dataset_split_indices(split=split)
    assert len(test) == 12 and len(train) == 48 and not set(train) & set(test)
    other = services.dataset_version_split(version=ready_dataset_version, actor=owner, seed=43)
    assert not np.array_equal(services.dataset_split_indices(split=other)[1], test)
    assert AuditEntry.objects.filter(action="dataset_split.created").count() == 2


def test_split_stratifies_a_categorical_target(ready_dataset_version: DatasetVersion, owner: object) -> None:
    split = services.dataset_version_split(
        version=ready_dataset_version, actor=owner, test_size=0.25, stratify="species"
    )
    assert split.stratified is True and split.note == ""
    _, test = services.dataset_split_indices(split=split)
    labels = services.dataset_version_load_frame(ready_dataset_version)["species"]
    assert labels.iloc[test].value_counts().to_dict() == {"setosa": 5, "versicolor": 5, "virginica": 5}


def test_split_by_a_continuous_column_is_plain_and_says_why(
    ready_dataset_version: DatasetVersion, owner: object
) -> None:
    split = services.dataset_version_split(version=ready_dataset_version, actor=owner, stratify="sepal_width")
    assert split.stratified is False
    assert split.note == "not stratified: 'sepal_width' is numeric with 5 distinct values"


def test_split_refuses_bad_requests(
    ready_dataset_version: DatasetVersion, dataset: Dataset, make_dataset_version: object, owner: object
) -> None:
    with pytest.raises(ValidationError, match="has no column 'ghost'"):
        services.dataset_version_split(version=ready_dataset_version, actor=owner, stratify="ghost")
    with pytest.raises(ValidationError, match="between 0 and 1"):
        services.dataset_version_split(version=ready_dataset_version, actor=owner, test_size=1.5)
    with pytest.raises(ValidationError, match="non-negative integer"):
        services.dataset_version_split(version=ready_dataset_version, actor=owner, seed=-1)
    pending = make_dataset_version(dataset, b"a\n1\n2\n", profile=False)
    with pytest.raises(ValidationError, match="only a ready version can be split"):
        services.dataset_version_split(version=pending, actor=owner)


def test_demo_like_integer_labels_stratify(dataset: Dataset, make_dataset_version: object, owner: object) -> None:
    frame = pd.DataFrame({"pixel": range(100), "target": [i % 10 for i in range(100)]})
    version = make_dataset_version(dataset, csv_bytes(frame))
    split = services.dataset_version_split(version=version, actor=owner, stratify="target")
    assert split.stratified is True
    _, test = services.dataset_split_indices(split=split)
    assert np.bincount(np.asarray(frame["target"])[test]).tolist() == [2] * 10
