"""Tracking: experiments and runs, with their params, metric series, tags, artifacts and end state.

These services serve the worker (pipelines, trials) and clients that train elsewhere and log through
the API, MLflow-style. Those that change state check the actor's role in the project themselves.
"""

from __future__ import annotations

import functools
import math
import mimetypes
import platform
import subprocess
from collections.abc import Iterable, Mapping
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from apps.core.artifacts import get_artifact_store
from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.core.services import audit_record, clean_name
from apps.experiments.choices import RunArtifactKind, RunStatus
from apps.experiments.models import Experiment, Run, RunArtifact, RunMetric

# The most metric points one log-metrics call may carry, and the insert batch size.
MAX_METRIC_BATCH = 1000
METRIC_INSERT_BATCH = 500
MAX_PARAMS = 500
MAX_KEY_LENGTH = 128
MAX_VALUE_LENGTH = 6000
PACKAGES = ("numpy", "pandas", "scikit-learn", "xgboost", "torch", "optuna", "skops", "Django", "celery")


def _actor(actor: AbstractBaseUser | None) -> AbstractBaseUser | None:
    return actor if getattr(actor, "is_authenticated", False) else None


@functools.cache
def code_version() -> str:
    """`git rev-parse HEAD` of the console checkout, or "" where there is no git (a container image)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    sha = result.stdout.strip()
    return sha if len(sha) in (40, 64) else ""


@functools.cache
def package_versions() -> dict[str, str]:
    """Python and the versions of the packages that decide what a model computes."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# Experiments

EXPERIMENT_NAME_MISSING = "An experiment needs a name."


@transaction.atomic
def experiment_create(
    *, project: Project, name: str, actor: AbstractBaseUser | None, description: str = ""
) -> Experiment:
    """A new experiment; `actor=None` is the system (a pipeline run that no user started)."""
    if actor is not None:
        require_project_role(actor, project, ProjectRole.EDITOR)
    name, key = clean_name(name, missing=EXPERIMENT_NAME_MISSING)
    if Experiment.objects.filter(project=project, name_key=key).exists():
        raise ValidationError({"name": f"An experiment named {name!r} exists in {project.name}."})
    experiment = Experiment.objects.create(
        project=project, name=name, name_key=key, description=description.strip(), created_by=_actor(actor)
    )
    audit_record(actor=actor, action="experiment.created", obj=experiment, project=project, after={"name": name})
    return experiment


def experiment_get_or_create(
    *, project: Project, name: str, actor: AbstractBaseUser | None, field: str = "experiment_name"
) -> Experiment:
    """The project's experiment of that name (compared like project names), created if missing.

    `field` is where the caller's user gave the name, so that a bad one is reported there.
    """
    name, key = clean_name(name, field=field, missing=EXPERIMENT_NAME_MISSING)
    existing = Experiment.objects.filter(project=project, name_key=key).first()
    if existing is not None:
        return existing
    try:
        # A savepoint: losing the race to the unique constraint leaves the caller's transaction usable.
        with transaction.atomic():
            return experiment_create(project=project, name=name, actor=actor)
    except (IntegrityError, ValidationError):
        return Experiment.objects.get(project=project, name_key=key)


# Runs


def _check_mapping(values: Any, field: str) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValidationError({field: "Must be an object of names to values."})
    if len(values) > MAX_PARAMS:
        raise ValidationError({field: f"At most {MAX_PARAMS} entries per call; got {len(values)}."})
    for key, value in values.items():
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
            raise ValidationError({field: f"Names must be 1 to {MAX_KEY_LENGTH} characters; got {key!r}."})
        if len(str(value)) > MAX_VALUE_LENGTH:
            raise ValidationError({field: f"The value of {key!r} is longer than {MAX_VALUE_LENGTH} characters."})
    return dict(values)


@transaction.atomic
def run_create(
    *,
    experiment: Experiment,
    actor: AbstractBaseUser,
    name: str = "",
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    parent: Run | None = None,
    dataset_version: Any = None,
    code_version_value: str = "",
) -> Run:
    """A run that a client logs to (status running from now on), MLflow's `create_run`."""
    require_project_role(actor, experiment.project, ProjectRole.EDITOR)
    if parent is not None and parent.experiment_id != experiment.pk:
        raise ValidationError({"parent": "The parent run belongs to another experiment."})
    if dataset_version is not None and dataset_version.dataset.project_id != experiment.project_id:
        raise ValidationError({"dataset_version": "The dataset version belongs to another project."})
    now = timezone.now()
    run = Run.objects.create(
        experiment=experiment,
        name=str(name or "").strip()[:200],
        status=RunStatus.RUNNING,
        params=_check_mapping(params, "params"),
        tags=_check_mapping(tags, "tags"),
        parent=parent,
        dataset_version=dataset_version,
        code_version=str(code_version_value or "")[:64],
        created_by=_actor(actor),
        started_at=now,
    )
    audit_record(
        actor=actor, action="run.created", obj=run, project=experiment.project, after={"status": RunStatus.RUNNING}
    )
    return run


def _locked_open_run(run: Run, actor: AbstractBaseUser) -> Run:
    locked = Run.objects.select_for_update().select_related("experiment__project").get(pk=run.pk)
    require_project_role(actor, locked.experiment.project, ProjectRole.EDITOR)
    if locked.is_finished:
        raise ValidationError({"status": f"{locked} is {locked.status}; a finished run cannot be changed."})
    return locked


@transaction.atomic
def run_log_params(
    *,
    run: Run,
    actor: AbstractBaseUser,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Run:
    """Add params (a logged param keeps its value, as in MLflow) and set tags (tags may change)."""
    params = _check_mapping(params, "params")
    tags = _check_mapping(tags, "tags")
    locked = _locked_open_run(run, actor)
    changed = [key for key, value in params.items() if key in locked.params and locked.params[key] != value]
    if changed:
        raise ValidationError({"params": f"Params cannot change once logged: {', '.join(sorted(changed))}."})
    locked.params = {**locked.params, **params}
    locked.tags = {**locked.tags, **tags}
    locked.save(update_fields=["params", "tags"])
    return locked


def _finite(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
        raise ValidationError({field: f"Must be a finite number; got {value!r}."})
    return float(value)


def _metric_points(run: Run, points: Iterable[Mapping[str, Any]]) -> list[RunMetric]:
    now = timezone.now()
    rows = []
    for index, point in enumerate(points):
        field = f"metrics[{index}]"
        if not isinstance(point, Mapping):
            raise ValidationError({field: "Must be an object with name, value and optionally step and timestamp."})
        name = point.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_KEY_LENGTH:
            raise ValidationError({f"{field}.name": f"Must be 1 to {MAX_KEY_LENGTH} characters; got {name!r}."})
        step = point.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValidationError({f"{field}.step": f"Must be a non-negative integer; got {step!r}."})
        timestamp = point.get("timestamp") or now
        if not isinstance(timestamp, datetime):
            raise ValidationError({f"{field}.timestamp": "Must be a date and time."})
        if timezone.is_naive(timestamp):
            raise ValidationError({f"{field}.timestamp": "Must include a time zone."})
        value = _finite(point.get("value"), f"{field}.value")
        rows.append(RunMetric(run=run, name=name.strip(), step=step, value=value, timestamp=timestamp))
    return rows


def _refresh_summary(run_id: int, names: set[str]) -> dict[str, Any]:
    """Set the metrics summary of `names` to each series' value at its highest step (the last logged wins ties)."""
    tops = (
        RunMetric.objects.filter(run_id=run_id, name__in=names)
        .values("name")
        .annotate(top=Max("step"))
        .values_list("name", "top")
    )
    wanted = Q(pk__in=[])
    for name, top in tops:
        wanted |= Q(name=name, step=top)
    latest: dict[str, float] = {}
    for name, value in RunMetric.objects.filter(wanted, run_id=run_id).order_by("id").values_list("name", "value"):
        latest[name] = value
    run = Run.objects.select_for_update().only("metrics").get(pk=run_id)
    summary = {**run.metrics, **latest}
    Run.objects.filter(pk=run_id).update(metrics=summary)
    return summary


def run_metrics_record(*, run_id: int, points: list[tuple[str, int, float]]) -> None:
    """Append metric points from the worker (already numbers) and refresh the summary."""
    now = timezone.now()
    rows = [
        RunMetric(run_id=run_id, name=name, step=int(step), value=float(value), timestamp=now)
        for name, step, value in points
        if math.isfinite(float(value))
    ]
    if not rows:
        return
    with transaction.atomic():
        RunMetric.objects.bulk_create(rows, batch_size=METRIC_INSERT_BATCH)
        _refresh_summary(run_id, {row.name for row in rows})


@transaction.atomic
def run_log_metrics(*, run: Run, actor: AbstractBaseUser, metrics: list[Mapping[str, Any]]) -> int:
    """Append a batch of metric points; returns how many were stored."""
    if not isinstance(metrics, list) or not metrics:
        raise ValidationError({"metrics": "Give a non-empty list of {name, value, step, timestamp} points."})
    if len(metrics) > MAX_METRIC_BATCH:
        raise ValidationError({"metrics": f"At most {MAX_METRIC_BATCH} points per call; got {len(metrics)}."})
    locked = _locked_open_run(run, actor)
    rows = _metric_points(locked, metrics)
    RunMetric.objects.bulk_create(rows, batch_size=METRIC_INSERT_BATCH)
    _refresh_summary(locked.pk, {row.name for row in rows})
    return len(rows)


@transaction.atomic
def run_set_terminated(*, run: Run, actor: AbstractBaseUser, status: str, error: str = "") -> Run:
    """End a run a client started: succeeded, failed or cancelled."""
    if status not in RunStatus.finished():
        raise ValidationError({"status": f"Must be one of {', '.join(RunStatus.finished())}; got {status!r}."})
    locked = _locked_open_run(run, actor)
    before = {"status": locked.status}
    locked.status = status
    locked.error = str(error or "")[:10000]
    locked.ended_at = timezone.now()
    locked.save(update_fields=["status", "error", "ended_at"])
    audit_record(
        actor=actor,
        action="run.terminated",
        obj=locked,
        project=locked.experiment.project,
        before=before,
        after={"status": status},
    )
    return locked


def run_artifact_store(
    *,
    run: Run,
    path: Path,
    name: str,
    kind: str = RunArtifactKind.OTHER,
    actor: AbstractBaseUser | None,
) -> RunArtifact:
    """Put a file into the artifact store and record it on the run (same name again: replaced).

    `actor=None` is the system: a pipeline stage storing what it trained.
    """
    if actor is not None:
        require_project_role(actor, run.experiment.project, ProjectRole.EDITOR)
    name = str(name or "").replace("\\", "/").strip().strip("/")
    if not name or len(name) > 255 or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValidationError({"name": f"Not a usable artifact name: {name!r}."})
    if kind not in RunArtifactKind.values:
        raise ValidationError({"kind": f"Must be one of {', '.join(RunArtifactKind.values)}."})
    stored = get_artifact_store().put_file(path)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    with transaction.atomic():
        artifact, _ = RunArtifact.objects.update_or_create(
            run=run,
            name=name,
            defaults={"kind": kind, "sha256": stored.sha256, "size_bytes": stored.size, "content_type": content_type},
        )
        if actor is not None:
            audit_record(
                actor=actor,
                action="run.artifact_logged",
                obj=run,
                project=run.experiment.project,
                after={"name": name, "sha256": stored.sha256, "size": stored.size},
            )
    return artifact


def run_artifact_link(*, run: Run, source: RunArtifact, name: str | None = None) -> RunArtifact:
    """Record an artifact another run stored (same bytes, same hash) on this run too."""
    artifact, _ = RunArtifact.objects.update_or_create(
        run=run,
        name=name or source.name,
        defaults={
            "kind": source.kind,
            "sha256": source.sha256,
            "size_bytes": source.size_bytes,
            "content_type": source.content_type,
        },
    )
    return artifact
