"""Use cases of the datasets app: datasets, content-addressed versions, profiling, rules, splits and loading.

Services that change state take `actor` and check the actor's role in the dataset's project themselves.
The experiments app calls `dataset_version_split`, `dataset_split_indices` and `dataset_version_load_frame`,
and reads `version.schema`, `version.profile`, `version.blocking_failed`, `version.status` and
`version.row_count`.
"""

from __future__ import annotations

import logging
import unicodedata
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.artifacts import get_artifact_store, hash_file
from apps.core.choices import ProjectRole
from apps.core.jobs import JobProgress, job_claim, job_finish, job_start
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.core.queueing import enqueue_on_commit
from apps.core.services import artifact_verified_path, audit_record, audited_update, clean_name
from apps.datasets import selectors
from apps.datasets.choices import DatasetVersionStatus
from apps.datasets.models import Dataset, DatasetSplit, DatasetVersion
from apps.datasets.tasks import PROFILE_TIME_LIMIT, dataset_version_profile_task
from worker.datasets.formats import FileFormatError, format_for_name, inspect_file, read_table
from worker.datasets.pipeline import profile_file
from worker.datasets.schema import BOOLEAN, CATEGORICAL, INTEGER, schema_columns
from worker.datasets.splits import SplitError, indices_from_bytes, indices_to_bytes, split_indices
from worker.datasets.validation import RulesError, parse_rules

logger = logging.getLogger(__name__)

JOB_KIND_PROFILE = "dataset.profile"
FILE_NAME_MAX_LENGTH = 255
# An integer column with more distinct values than this is a quantity, not a class label.
MAX_STRATIFY_CLASSES = 100
# How far back to look for a profiled ancestor to compare a schema with.
MAX_PARENT_DEPTH = 50
# A claim older than the task's hard time limit belongs to a worker that died.
STALE_CLAIM_AFTER = timedelta(seconds=PROFILE_TIME_LIMIT + 60)
# A version still pending this long after upload lost its queue message.
STALE_PENDING_AFTER = timedelta(minutes=10)


# Datasets


def _clean_rules(rules: Any) -> dict[str, Any]:
    try:
        return parse_rules(rules)
    except RulesError as exc:
        raise ValidationError({"rules": str(exc)}) from None


def _name_taken(name: str) -> ValidationError:
    message = f"A dataset named {name!r}, or one that differs only in case, form or encoding, exists in this project."
    return ValidationError({"name": message})


@transaction.atomic
def dataset_create(
    *,
    project: Project,
    name: str,
    actor: AbstractBaseUser,
    description: str = "",
    rules: dict[str, Any] | None = None,
) -> Dataset:
    require_project_role(actor, project, ProjectRole.EDITOR)
    name, name_key = clean_name(name, missing="A dataset needs a name.")
    rules = _clean_rules(rules)
    if Dataset.objects.filter(project=project, name_key=name_key).exists():
        raise _name_taken(name)
    try:
        # A savepoint, so that losing a race to the unique constraint leaves the outer transaction usable.
        with transaction.atomic():
            dataset = Dataset.objects.create(
                project=project,
                name=name,
                name_key=name_key,
                description=description.strip(),
                rules=rules,
                created_by=actor,
            )
    except IntegrityError:
        raise _name_taken(name) from None
    audit_record(
        actor=actor, action="dataset.created", obj=dataset, project=project, after={"name": name, "rules": rules}
    )
    return dataset


@transaction.atomic
def dataset_update(
    *,
    dataset: Dataset,
    actor: AbstractBaseUser,
    description: str | None = None,
    rules: dict[str, Any] | None = None,
) -> Dataset:
    """Change the description and/or the validation rules. New rules apply to versions profiled from now on."""
    require_project_role(actor, dataset.project, ProjectRole.EDITOR)
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    changes: dict[str, Any] = {}
    if description is not None:
        changes["description"] = description.strip()
    if rules is not None:
        changes["rules"] = _clean_rules(rules)
    audited_update(obj=dataset, actor=actor, action="dataset.updated", project=dataset.project, changes=changes)
    return dataset


# Versions


def sanitize_file_name(raw: str) -> str:
    """The last path component, printable and at most 255 characters; the name never reaches the filesystem."""
    name = unicodedata.normalize("NFKC", raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if not name.strip("."):
        raise ValidationError({"file": f"The file name {raw!r} is not usable; name the file like data.csv."})
    if len(name) > FILE_NAME_MAX_LENGTH:
        stem, dot, suffix = name.rpartition(".")
        name = stem[: FILE_NAME_MAX_LENGTH - len(suffix) - 1] + dot + suffix if dot else name[:FILE_NAME_MAX_LENGTH]
    return name


def _enqueue_profile(version_id: int) -> None:
    # A lost send is taken over by the beat's datasets.requeue_stale_versions (the version stays pending).
    enqueue_on_commit(dataset_version_profile_task, version_id)


def dataset_version_create(
    *,
    dataset: Dataset,
    path: Path,
    file_name: str,
    actor: AbstractBaseUser,
    sha256: str | None = None,
    size: int | None = None,
) -> tuple[DatasetVersion, bool]:
    """Add the file at `path` as the dataset's next version; return (version, created).

    Identical content returns the existing version with created=False. Otherwise the file gets the cheap
    structural check first, so a bad file raises a ValidationError on `file` and leaves nothing behind;
    then it is stored by hash, recorded, and queued for profiling once the transaction commits. `sha256`
    and `size` come from the upload handler, which hashed the file while receiving it.
    """
    require_project_role(actor, dataset.project, ProjectRole.EDITOR)
    file_name = sanitize_file_name(file_name)
    if sha256 is None or size is None:
        sha256, size = hash_file(path)
    existing = dataset.versions.filter(sha256=sha256).first()
    if existing is not None:
        return existing, False
    # The check streams the whole file, so it runs before the transaction: no row lock is held meanwhile.
    try:
        info = inspect_file(path, format_for_name(file_name))
    except FileFormatError as exc:
        raise ValidationError({"file": f"{file_name}: {exc}"}) from None

    store = get_artifact_store()
    newly_stored = not store.exists(sha256)
    try:
        with transaction.atomic():
            # Locking the dataset serialises uploads to it: numbers stay gapless and the parent is the true latest.
            locked = Dataset.objects.select_for_update().select_related("project").get(pk=dataset.pk)
            existing = locked.versions.filter(sha256=sha256).first()
            if existing is not None:
                return existing, False
            parent = locked.versions.order_by("-number").first()
            store.put_hashed_file(path, sha256=sha256, size=size)
            version = DatasetVersion.objects.create(
                dataset=locked,
                number=(parent.number + 1) if parent else 1,
                sha256=sha256,
                format=info.format,
                file_name=file_name,
                size_bytes=size,
                row_count=info.row_count,
                column_count=len(info.columns),
                parent=parent,
                created_by=actor if getattr(actor, "is_authenticated", False) else None,
            )
            version.job = job_start(kind=JOB_KIND_PROFILE, project=locked.project, actor=actor, obj=version)
            version.save(update_fields=["job"])
            audit_record(
                actor=actor,
                action="dataset_version.created",
                obj=version,
                project=locked.project,
                after={
                    "number": version.number,
                    "sha256": sha256,
                    "file_name": file_name,
                    "rows": info.row_count,
                    "columns": len(info.columns),
                },
            )
            _enqueue_profile(version.pk)
    except BaseException:
        # Nothing may outlive a failed upload: drop the stored file unless another version shares it.
        if newly_stored and not DatasetVersion.objects.filter(sha256=sha256).exists():
            store.delete(sha256)
        raise
    return version, True


def _comparison_parent(version: DatasetVersion) -> DatasetVersion | None:
    """The nearest profiled ancestor, whose schema the new one is compared with."""
    ancestor = version.parent
    for _ in range(MAX_PARENT_DEPTH):
        if ancestor is None or ancestor.status == DatasetVersionStatus.READY:
            return ancestor
        ancestor = ancestor.parent
    return None


def dataset_version_profile(*, version_id: int) -> DatasetVersion | None:
    """Infer the schema, profile and validate a version on the worker. Returns None if there is nothing to do.

    The version is claimed with a conditional UPDATE first, so a second delivery of the same task (or two
    workers) can never profile it twice; a claim older than the task's hard time limit is taken over.
    The heavy work runs outside any transaction; only the final write is atomic.
    """
    now = timezone.now()
    claimable = Q(status=DatasetVersionStatus.PENDING) | Q(
        status=DatasetVersionStatus.PROFILING, claimed_at__lt=now - STALE_CLAIM_AFTER
    )
    claimed = (
        DatasetVersion.objects.filter(pk=version_id)
        .filter(claimable)
        .update(status=DatasetVersionStatus.PROFILING, claimed_at=now, error="")
    )
    if not claimed:
        logger.info("dataset version %s is not waiting for profiling; nothing to do", version_id)
        return None
    version = DatasetVersion.objects.select_related("dataset__project", "parent", "job").get(pk=version_id)
    project = version.dataset.project
    # The job is claimed at the version's claim time, so both go stale, and are taken over, together.
    job = job_claim(job=version.job, stale_after=STALE_CLAIM_AFTER, now=now) if version.job else None
    progress = JobProgress(job)
    try:
        rules = parse_rules(version.dataset.rules)
        path = artifact_verified_path(sha256=version.sha256, project=project, obj=version)
        progress(0.05, f"verified {version.file_name} ({version.size_bytes:,} bytes, sha256 {version.sha256[:12]}…)")
        parent = _comparison_parent(version)
        result = profile_file(
            path,
            version.format,
            rules=rules,
            parent_schema=parent.schema if parent else None,
            parent_label=parent.label if parent else "",
            progress=progress,
        )
    except Exception as exc:
        # The row is the truth the UI shows: record the failure there rather than let the task retry it.
        return _profile_failed(version_id=version_id, claimed_at=now, exc=exc, progress=progress)

    with transaction.atomic():
        locked = DatasetVersion.objects.select_for_update().get(pk=version_id)
        if locked.status != DatasetVersionStatus.PROFILING or locked.claimed_at != now:
            logger.warning("dataset version %s was taken over by another worker; dropping this result", version_id)
            return locked
        progress.flush()
        locked.schema = result.schema
        locked.profile = result.profile
        locked.validation = result.report
        locked.blocking_failed = result.report["blocking_failed"]
        locked.row_count = result.row_count
        locked.column_count = result.column_count
        locked.status = DatasetVersionStatus.READY
        locked.profiled_at = timezone.now()
        locked.save(
            update_fields=[
                "schema",
                "profile",
                "validation",
                "blocking_failed",
                "row_count",
                "column_count",
                "status",
                "profiled_at",
            ]
        )
        if progress.job:
            job_finish(job=progress.job)
        audit_record(
            actor=None,
            action="dataset_version.profiled",
            obj=locked,
            project=project,
            before={"status": DatasetVersionStatus.PROFILING},
            after={
                "status": DatasetVersionStatus.READY,
                "validation": result.report["status"],
                "blocking_failed": locked.blocking_failed,
                "seconds": {phase: round(seconds, 3) for phase, seconds in result.timings.items()},
            },
        )
    return locked


def _profile_failed(*, version_id: int, claimed_at: Any, exc: BaseException, progress: JobProgress) -> DatasetVersion:
    message = f"{type(exc).__name__}: {exc}"
    with transaction.atomic():
        locked = DatasetVersion.objects.select_for_update().select_related("dataset__project").get(pk=version_id)
        if locked.status != DatasetVersionStatus.PROFILING or locked.claimed_at != claimed_at:
            return locked
        locked.status = DatasetVersionStatus.FAILED
        locked.error = message[:2000]
        locked.save(update_fields=["status", "error"])
        progress.flush()
        if progress.job:
            job_finish(job=progress.job, error=exc)
        audit_record(
            actor=None,
            action="dataset_version.failed",
            obj=locked,
            project=locked.dataset.project,
            before={"status": DatasetVersionStatus.PROFILING},
            after={"status": DatasetVersionStatus.FAILED},
            message=message[:500],
        )
    logger.warning("profiling dataset version %s failed: %s", version_id, message)
    return locked


@transaction.atomic
def dataset_version_revalidate(*, version: DatasetVersion, actor: AbstractBaseUser) -> DatasetVersion:
    """Profile and validate a settled version again, with the dataset's current rules."""
    require_project_role(actor, version.dataset.project, ProjectRole.EDITOR)
    locked = DatasetVersion.objects.select_for_update().select_related("dataset__project").get(pk=version.pk)
    if not locked.is_settled:
        raise ValidationError({"status": f"{locked} is {locked.status}; wait until it is ready or failed."})
    before = {
        "status": locked.status,
        "validation": locked.validation_status,
        "blocking_failed": locked.blocking_failed,
    }
    locked.status = DatasetVersionStatus.PENDING
    locked.job = job_start(kind=JOB_KIND_PROFILE, project=locked.dataset.project, actor=actor, obj=locked)
    locked.error = ""
    locked.claimed_at = None
    locked.save(update_fields=["status", "job", "error", "claimed_at"])
    audit_record(
        actor=actor,
        action="dataset_version.revalidation_requested",
        obj=locked,
        project=locked.dataset.project,
        before=before,
        after={"status": DatasetVersionStatus.PENDING, "rules": locked.dataset.rules},
    )
    _enqueue_profile(locked.pk)
    return locked


def dataset_versions_requeue_stale() -> int:
    """Queue profiling again for versions that waited too long or whose worker died; the claim keeps it safe."""
    now = timezone.now()
    stale = DatasetVersion.objects.filter(
        Q(status=DatasetVersionStatus.PENDING, created_at__lt=now - STALE_PENDING_AFTER)
        | Q(status=DatasetVersionStatus.PROFILING, claimed_at__lt=now - STALE_CLAIM_AFTER)
    ).values_list("pk", flat=True)
    ids = list(stale)
    for version_id in ids:
        dataset_version_profile_task.delay(version_id)
    if ids:
        logger.warning("queued profiling again for stale dataset versions %s", ids)
    return len(ids)


# Loading and splitting (used by the experiments app)


def dataset_version_load_frame(
    version: DatasetVersion, *, columns: list[str] | None = None, actor: AbstractBaseUser | None = None
) -> pd.DataFrame:
    """The version's data as a DataFrame, read after hash verification; a tampered file is refused and audited.

    `version` may be passed positionally: callers think of this as "load this version".
    """
    path = artifact_verified_path(sha256=version.sha256, project=version.dataset.project, obj=version, actor=actor)
    table = read_table(path, version.format, columns)
    # self_destruct frees each Arrow column as it is converted, so the data is not held twice.
    return table.to_pandas(self_destruct=True, split_blocks=True)


def _stratum_labels(version: DatasetVersion, column: str, actor: AbstractBaseUser | None) -> tuple[Any, str]:
    """The labels to stratify by, or None and the reason the column cannot stratify."""
    entry = schema_columns(version.schema).get(column)
    if entry is None:
        raise ValidationError({"stratify": f"{version} has no column {column!r}."})
    distinct = version.profile.get("columns", {}).get(column, {}).get("distinct", 0)
    categorical = entry["type"] in (CATEGORICAL, BOOLEAN) or (
        entry["type"] == INTEGER and distinct <= MAX_STRATIFY_CLASSES
    )
    if not categorical:
        return None, f"not stratified: {column!r} is {entry['type']} with {distinct:,} distinct values"
    path = artifact_verified_path(sha256=version.sha256, project=version.dataset.project, obj=version, actor=actor)
    labels = read_table(path, version.format, [column]).column(0).to_pandas()
    return labels, ""


def dataset_version_split(
    *,
    version: DatasetVersion,
    test_size: float = 0.2,
    seed: int = 42,
    stratify: str | None = None,
    actor: AbstractBaseUser | None,
) -> DatasetSplit:
    """A reproducible train/test split; the same parameters return the same split row.

    Stratified by `stratify` when that column is categorical (a category, boolean or an integer class
    label); otherwise a plain random split, with the reason in `split.note`. `actor=None` is the system: a
    pipeline run that no user started (a user's pipeline passes its creator, whose role is checked).
    """
    if actor is not None:
        require_project_role(actor, version.dataset.project, ProjectRole.EDITOR)
    if version.status != DatasetVersionStatus.READY:
        raise ValidationError({"version": f"{version} is {version.status}; only a ready version can be split."})
    if isinstance(test_size, bool) or not isinstance(test_size, int | float) or not 0 < test_size < 1:
        raise ValidationError({"test_size": f"test_size must be between 0 and 1 (exclusive); got {test_size!r}."})
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValidationError({"seed": f"seed must be a non-negative integer; got {seed!r}."})
    test_size = float(test_size)
    stratify = (stratify or "").strip()
    existing = selectors.dataset_split_find(version=version, test_size=test_size, seed=seed, stratify=stratify)
    if existing is not None:
        return existing
    labels, note = _stratum_labels(version, stratify, actor) if stratify else (None, "")
    try:
        train, test = split_indices(version.row_count, test_size=test_size, seed=seed, strata=labels)
    except SplitError as exc:
        raise ValidationError({"test_size": str(exc)}) from None
    stored = get_artifact_store().put_bytes(indices_to_bytes(test))
    with transaction.atomic():
        split, created = DatasetSplit.objects.get_or_create(
            version=version,
            test_size=test_size,
            seed=seed,
            stratify=stratify,
            defaults={
                "stratified": labels is not None,
                "train_count": len(train),
                "test_count": len(test),
                "test_indices_sha256": stored.sha256,
                "note": note,
                "created_by": actor if getattr(actor, "is_authenticated", False) else None,
            },
        )
        if created:
            audit_record(
                actor=actor,
                action="dataset_split.created",
                obj=split,
                project=version.dataset.project,
                after={
                    "version": version.number,
                    "test_size": test_size,
                    "seed": seed,
                    "stratify": stratify,
                    "stratified": split.stratified,
                    "train": split.train_count,
                    "test": split.test_count,
                },
            )
    return split


def dataset_split_indices(
    *, split: DatasetSplit, actor: AbstractBaseUser | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted int64 row indices of a split, read from the verified artifact."""
    version = split.version
    path = artifact_verified_path(
        sha256=split.test_indices_sha256, project=version.dataset.project, obj=split, actor=actor
    )
    test = indices_from_bytes(path.read_bytes())
    train = np.setdiff1d(np.arange(version.row_count, dtype=np.int64), test, assume_unique=True)
    return train, test
