"""Use cases of drift monitoring: build a reference, run a drift report (a core.Job the worker executes), and the
beat's schedule of reports per deployment.

A report reads the window's logged inputs through telemetry's selectors in bounded batches, turns them into one
array per reference column, and hands them to the Django-free engine (worker.monitoring.drift) with the stored
reference profile; the engine's DriftReport is stored as JSON beside the figures the pages list.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.artifacts import get_artifact_store
from apps.core.choices import JobStatus, ProjectRole
from apps.core.exceptions import Conflict, ValidationError
from apps.core.jobs import JobProgress, job_claim, job_finish, job_start
from apps.core.permissions import require_project_role
from apps.core.queueing import enqueue_on_commit
from apps.core.services import audit_record
from apps.datasets.services import dataset_version_load_frame
from apps.deployments.models import Deployment
from apps.deployments.selectors import deployment_targets
from apps.monitoring import selectors
from apps.monitoring.choices import ReferenceSource
from apps.monitoring.drift_settings import PROBA_PREFIX, drift_settings_of, is_output_column, output_kinds
from apps.monitoring.models import DriftReference, DriftReport
from apps.monitoring.tasks import drift_report_execute_task
from apps.registry.models import ModelVersion
from apps.telemetry import selectors as telemetry
from apps.telemetry.models import NO_VERSION
from worker.datasets.schema import schema_columns
from worker.monitoring.drift import (
    CATEGORICAL,
    NUMERIC,
    ColumnTest,
    DriftOptions,
    ReferenceProfile,
    drift_report,
    reference_profile,
)
from worker.monitoring.histograms import column_histogram

logger = logging.getLogger(__name__)

DRIFT_JOB_KIND = "monitoring.drift_report"
# Logged events read per query of the prediction log (a server's event may hold several rows).
INPUT_BATCH_EVENTS = 1_000
# The share of a report's progress bar given to reading the window (the tests take the rest).
READ_SHARE = 0.8
# A job still running after this long belongs to a worker that died; the next delivery takes it over.
DRIFT_JOB_STALE_AFTER = timedelta(hours=1)
# A queued report whose task has not started after this long was lost (sent while the broker was down).
DRIFT_JOB_REQUEUE_AFTER = timedelta(minutes=5)
# `manage.py check_drift` and `check_data_drift` look back this far unless told otherwise.
DEFAULT_WINDOW = timedelta(hours=24)
MAX_WINDOW = timedelta(days=400)
# Signature input types tested as numbers; every other type is categorical.
NUMERIC_TYPES = ("integer", "number", "boolean")
_WINDOW = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_WINDOW_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_window(value: Any, *, field: str = "window") -> timedelta:
    """A window length as people write it: `1h`, `24h`, `7d`, `2w`; a 400 naming `field` otherwise."""
    match = _WINDOW.match(str(value)) if isinstance(value, str) else None
    if match is None or int(match.group(1)) == 0:
        raise ValidationError("A window is a positive number of hours, days or weeks: 1h, 24h, 7d, 2w.", field=field)
    window = timedelta(**{_WINDOW_UNITS[match.group(2)]: int(match.group(1))})
    if window > MAX_WINDOW:
        raise ValidationError(f"A window is at most {MAX_WINDOW.days} days.", field=field)
    return window


def live_version(deployment: Deployment) -> ModelVersion:
    live, _ = deployment_targets(deployment)
    if not live:
        raise Conflict(f"Deployment {deployment.name!r} serves no model version; roll one out first.")
    return max(live, key=lambda target: target.weight).model_version


def feature_kinds(version: ModelVersion) -> dict[str, str]:
    """The version's input columns (its signature) and how each is tested: numeric or categorical."""
    inputs = (version.signature or {}).get("inputs") or []
    kinds = {
        str(entry["name"]): NUMERIC if entry.get("type") in NUMERIC_TYPES else CATEGORICAL
        for entry in inputs
        if isinstance(entry, dict) and entry.get("name")
    }
    if not kinds:
        raise ValidationError(
            f"Model version v{version.number} has no input columns in its signature.", field="version"
        )
    return kinds


def _category(value: Any) -> Any:
    """A scalar as it is; a list or object (a tensor-like input) as its JSON text, so it is one category."""
    return value if value is None or isinstance(value, str | int | float) else json.dumps(value, sort_keys=True)


def _as_array(values: list[Any], kind: str) -> np.ndarray:
    if kind == NUMERIC:
        # In C: numbers (and booleans, and numbers written as text) as floats; anything else is missing.
        return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64)
    return np.fromiter((_category(value) for value in values), dtype=object, count=len(values))


def _output_values(outputs: Any, probabilities: Any, n: int, classes: list[Any]) -> dict[str, list[Any]]:
    """An event's outputs as drift columns (`prediction`, `proba:<class>`), n values each; what does not line up
    with its n input rows (a server that logged no outputs, ragged probabilities) is missing, not shifted."""
    values: dict[str, list[Any]] = {"prediction": outputs if isinstance(outputs, list) and len(outputs) == n else []}
    rows = (
        probabilities
        if isinstance(probabilities, list)
        and len(probabilities) == n
        and all(isinstance(row, list) and len(row) == len(classes) for row in probabilities)
        else None
    )
    for index, label in enumerate(classes):
        values[f"{PROBA_PREFIX}{label}"] = [row[index] for row in rows] if rows is not None else []
    return {name: column or [None] * n for name, column in values.items()}


def _window_columns(
    *,
    deployment: Deployment,
    start: datetime,
    end: datetime,
    kinds: dict[str, str],
    progress: JobProgress | None,
    classes: list[Any] | None = None,
) -> tuple[dict[str, np.ndarray], int]:
    """The window's logged inputs (and outputs, for the output columns in `kinds`: `prediction`,
    `proba:<class>` with `classes` in probability column order) as one array per column of `kinds`, and the
    number of rows.

    Each batch is turned into arrays before the next is read, so the decoded JSON of one batch at a time is
    held, not the window's. Reading is most of a report's time: `progress` goes from 0 to READ_SHARE as the
    predictions the rollups counted in the window are read."""
    expected = _logged_requests(deployment, start, end) if progress is not None else 0
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in kinds}
    inputs_wanted = [name for name in kinds if not is_output_column(name)]
    outputs_wanted = any(is_output_column(name) for name in kinds)
    n_rows = n_events = 0
    batches = telemetry.logged_prediction_batches(
        deployment_id=deployment.pk, since=start, until=end, batch_size=INPUT_BATCH_EVENTS
    )
    for batch in batches:
        values: dict[str, list[Any]] = {name: [] for name in kinds}
        for inputs, outputs, probabilities in batch:
            n = len(next(iter(inputs.values()), []))
            for name in inputs_wanted:
                values[name].extend(inputs.get(name) or [None] * n)
            if outputs_wanted:
                for name, column in _output_values(outputs, probabilities, n, classes or []).items():
                    if name in values:
                        values[name].extend(column)
            n_rows += n
        for name, column in values.items():
            chunks[name].append(_as_array(column, kinds[name]))
        n_events += len(batch)
        if progress is not None:
            progress(
                READ_SHARE * min(1.0, n_events / max(expected, 1)),
                f"read {n_events} logged predictions ({n_rows} rows)",
            )
    empty = {NUMERIC: np.empty(0, dtype=np.float64), CATEGORICAL: np.empty(0, dtype=object)}
    columns = {name: np.concatenate(parts) if parts else empty[kinds[name]] for name, parts in chunks.items()}
    return columns, n_rows


def _training_dataset(version: ModelVersion) -> Any:
    """The dataset version the model version was trained on, as lineage records it; None if it records none."""
    if version.dataset_version_id:
        return version.dataset_version
    return version.run.dataset_version if version.run_id and version.run.dataset_version_id else None


@transaction.atomic
def drift_reference_build(
    *,
    deployment: Deployment,
    version: ModelVersion | None = None,
    source: str,
    actor: AbstractBaseUser | None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
) -> DriftReference:
    """Profile a reference for the deployment's `version` (default: its main live version) and store it.

    `source` is `training` (the version's training dataset version, from lineage) or `traffic` (the deployment's
    logged inputs in [window_start, window_end)). Editors; `actor=None` is the system (the beat's schedule).
    """
    if actor is not None:
        require_project_role(actor, deployment.project, ProjectRole.EDITOR)
    version = version or live_version(deployment)
    if version.model_id != deployment.registered_model_id:
        raise ValidationError(f"v{version.number} is not a version of {deployment.registered_model}.", field="version")
    kinds = feature_kinds(version)
    dataset_version = None
    if source == ReferenceSource.TRAINING:
        dataset_version = _training_dataset(version)
        if dataset_version is None or not dataset_version.is_ready:
            raise ValidationError(
                f"v{version.number} records no ready training dataset version; use a window of traffic.",
                field="source",
            )
        available = schema_columns(dataset_version.schema or {})
        names = [name for name in kinds if name in available]
        if not names:
            raise ValidationError(f"{dataset_version} has none of the model's input columns.", field="source")
        frame = dataset_version_load_frame(dataset_version, columns=names, actor=actor)
        kinds = {name: kinds[name] for name in names}
        columns = {name: _as_array(frame[name].tolist(), kind) for name, kind in kinds.items()}
        n_rows = len(frame)
    elif source == ReferenceSource.TRAFFIC:
        if window_start is None or window_end is None or window_start >= window_end:
            raise ValidationError("A traffic reference needs a window whose start is before its end.", field="window")
        # A traffic reference also profiles the model's outputs, so reports can test prediction drift.
        kinds = {**kinds, **output_kinds(version)}
        columns, n_rows = _window_columns(
            deployment=deployment,
            start=window_start,
            end=window_end,
            kinds=kinds,
            progress=None,
            classes=version.classes or [],
        )
    else:
        raise ValidationError(f"source must be one of {', '.join(ReferenceSource.values)}.", field="source")
    if n_rows == 0:
        field = "source" if source == ReferenceSource.TRAINING else "window"
        raise ValidationError("The reference has no rows: there is nothing to compare with.", field=field)
    stored = get_artifact_store().put_bytes(reference_profile(columns, kinds).to_bytes())
    reference = DriftReference.objects.create(
        deployment=deployment,
        model_version=version,
        source=source,
        dataset_version=dataset_version,
        window_start=window_start if source == ReferenceSource.TRAFFIC else None,
        window_end=window_end if source == ReferenceSource.TRAFFIC else None,
        profile_sha256=stored.sha256,
        n_rows=n_rows,
        columns=kinds,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    audit_record(actor=actor, action="monitoring.reference_build", obj=reference, project=deployment.project)
    return reference


def _reference_for(deployment: Deployment, version: ModelVersion, actor: AbstractBaseUser | None) -> DriftReference:
    """The latest reference of this version on this deployment; built from training data on first use."""
    reference = DriftReference.objects.filter(deployment=deployment, model_version=version).first()
    if reference is not None:
        return reference
    if _training_dataset(version) is None:
        raise Conflict(
            f"v{version.number} records no training dataset version: build a reference from a window of traffic "
            "first (POST /api/v1/drift-references/ with source=traffic).",
            field="reference",
        )
    return drift_reference_build(deployment=deployment, version=version, source=ReferenceSource.TRAINING, actor=actor)


def drift_window(
    *, window: timedelta | None = None, start: datetime | None = None, end: datetime | None = None
) -> tuple[datetime, datetime]:
    """[start, end): an explicit range, or the `window` up to `end` (default now)."""
    end = end or timezone.now()
    if start is None:
        start = end - (window or DEFAULT_WINDOW)
    if start >= end:
        raise ValidationError("The window's start must be before its end.", field="start")
    if end - start > MAX_WINDOW:
        raise ValidationError(f"A window is at most {MAX_WINDOW.days} days.", field="start")
    return start, end


def _logged_requests(deployment: Deployment, start: datetime, end: datetime) -> int:
    """Live predictions the deployment logged in the window, by any version of its model (from the rollups)."""
    version_ids = [*deployment.registered_model.versions.values_list("pk", flat=True), NO_VERSION]
    served = telemetry.version_window_stats(
        deployment_id=deployment.pk, version_ids=version_ids, since=start, until=end, with_pinned=True
    )
    return sum(stats.requests for stats in served.values())


def _report_start(
    *,
    deployment: Deployment,
    actor: AbstractBaseUser | None,
    window: timedelta | None,
    start: datetime | None,
    end: datetime | None,
) -> DriftReport:
    if actor is not None:
        require_project_role(actor, deployment.project, ProjectRole.EDITOR)
    start, end = drift_window(window=window, start=start, end=end)
    version = live_version(deployment)
    if not _logged_requests(deployment, start, end):
        raise ValidationError(
            f"Deployment {deployment.name!r} logged no predictions between {start:%Y-%m-%d %H:%M} and "
            f"{end:%Y-%m-%d %H:%M} UTC; choose a window with traffic.",
            field="window",
        )
    reference = _reference_for(deployment, version, actor)
    report = DriftReport.objects.create(
        deployment=deployment, model_version=version, reference=reference, window_start=start, window_end=end
    )
    report.job = job_start(kind=DRIFT_JOB_KIND, project=deployment.project, actor=actor, obj=report)
    report.save(update_fields=["job"])
    return report


@transaction.atomic
def drift_report_run(
    *,
    deployment: Deployment,
    actor: AbstractBaseUser | None,
    window: timedelta | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> DriftReport:
    """Queue a drift report of the deployment's live inputs in the window against its version's reference.

    Editors; `actor=None` is the system (the beat's schedule). A window without logged predictions is a 400
    naming `window`; a version with neither a reference nor training lineage is a 409 naming `reference`. The
    first report of a version builds its training reference here, in the same transaction.
    """
    report = _report_start(deployment=deployment, actor=actor, window=window, start=start, end=end)
    # A lost send is taken over by the beat's monitoring.drift_reports_requeue_stale (the job stays queued).
    enqueue_on_commit(drift_report_execute_task, report.pk)
    return report


def _report_options(report: DriftReport, profile: ReferenceProfile) -> tuple[ReferenceProfile, DriftOptions]:
    """The profile's columns the deployment's settings test (its outputs only when prediction drift is on) and
    the options they are tested with. Overrides of columns this reference lacks are left out."""
    settings_row = drift_settings_of(report.deployment)
    kept = {
        name: column
        for name, column in profile.columns.items()
        if settings_row.prediction_drift or not is_output_column(name)
    }
    overrides = {
        name: ColumnTest(test=override.get("test"), threshold=override.get("threshold"))
        for name, override in settings_row.columns.items()
        if name in kept
    }
    return ReferenceProfile(columns=kept), DriftOptions(drift_share=settings_row.drift_share, columns=overrides)


def drift_report_execute(*, report_id: int) -> DriftReport | None:
    """The worker's part: claim the report's job, read the window, run the engine, store the result.

    Returns None when the job is not this worker's to run (already done, or running elsewhere). A failure is
    recorded on the job and the report (its reason), never raised: the page shows it.
    """
    report = (
        DriftReport.objects.select_related("deployment", "reference", "job", "model_version")
        .filter(pk=report_id)
        .first()
    )
    if report is None or report.job is None:
        return None
    job = job_claim(job=report.job, stale_after=DRIFT_JOB_STALE_AFTER)
    if job is None:
        return None
    progress = JobProgress(job)
    try:
        with get_artifact_store().open_verified(report.reference.profile_sha256) as handle:
            profile = ReferenceProfile.from_bytes(handle.read())
        profile, options = _report_options(report, profile)
        kinds = {name: column.kind for name, column in profile.columns.items()}
        progress(0.0, f"reference: {report.reference} ({report.reference.n_rows} rows, {len(kinds)} columns)")
        columns, n_rows = _window_columns(
            deployment=report.deployment,
            start=report.window_start,
            end=report.window_end,
            kinds=kinds,
            progress=progress,
            classes=report.model_version.classes or [],
        )
        progress(READ_SHARE, f"testing {len(kinds)} columns over {n_rows} rows")
        result = drift_report(profile, columns, options)
        report.result = result.to_dict()
        report.histograms = {
            name: column_histogram(column, columns.get(name)) for name, column in profile.columns.items()
        }
        report.drift_share = result.drift_share
        report.dataset_drift = result.dataset_drift
        report.n_rows = n_rows
        if result.n_tested == 0:
            reasons = sorted({column.reason for column in result.columns if column.reason})
            report.reason = (
                "No column could be tested: " + "; ".join(reasons)
                if n_rows
                else ("The window's predictions were logged without inputs.")
            )
        report.save(update_fields=["result", "histograms", "drift_share", "dataset_drift", "n_rows", "reason"])
        progress(1.0, f"{result.n_drifted} of {result.n_tested} columns drifted")
        progress.flush()
        job_finish(job=job)
    except Exception as exc:
        logger.exception("drift report %s failed", report.pk)
        progress.flush()
        report.reason = f"The report failed: {type(exc).__name__}: {exc}"
        report.save(update_fields=["reason"])
        job_finish(job=job, error=exc)
    report.refresh_from_db()
    return report


def check_data_drift(
    *,
    deployment: Deployment,
    actor: AbstractBaseUser | None,
    window: timedelta = DEFAULT_WINDOW,
    start: datetime | None = None,
    end: datetime | None = None,
) -> DriftReport:
    """The seed's `MonitoringSystem.check_data_drift(deployment)`: run a drift report now, in this process (no
    task is queued), and return it: the object the report page shows. The window is the last `window`, or
    [start, end) when given. Same checks and refusals as `drift_report_run`."""
    with transaction.atomic():
        report = _report_start(
            deployment=deployment, actor=actor, window=None if start else window, start=start, end=end
        )
    drift_report_execute(report_id=report.pk)
    report.refresh_from_db()
    return report


def check_model_performance(
    *,
    deployment: Deployment,
    actor: AbstractBaseUser | None,
    window: str = selectors.DEFAULT_DASHBOARD_WINDOW,
    metrics: bool = True,
) -> selectors.Performance:
    """The seed's `MonitoringSystem.check_model_performance(deployment)`: realised metrics per model version from
    the labels users sent, the CBPE estimate for the unlabelled predictions, accuracy over time, the prediction
    distribution and the drift reports' columns: the object the performance page shows. Any member of the
    project may read (outsiders: 404); `actor=None` is the system (commands, notebooks run as the operator).
    `metrics=False` leaves out the per-version metrics and estimate (`versions` is empty), for callers that
    draw only the charts."""
    if actor is not None:
        require_project_role(actor, deployment.project, ProjectRole.VIEWER)
    return selectors.deployment_performance(
        deployment=deployment, window=selectors.dashboard_window(window), metrics=metrics
    )


def drift_reports_schedule(*, now: datetime | None = None) -> int:
    """Beat: queue a report of the last interval for every running deployment that had traffic in it.

    Deployments without traffic in the interval, or without a reference to compare with, are skipped (logged);
    returns how many reports were queued.
    """
    end = now or timezone.now()
    interval = timedelta(seconds=settings.MONITORING_DRIFT_INTERVAL_SECONDS)
    queued = 0
    for deployment in Deployment.objects.active().select_related("project", "registered_model"):
        try:
            drift_report_run(deployment=deployment, actor=None, start=end - interval, end=end)
        except (ValidationError, Conflict) as exc:
            logger.info("no drift report for deployment %s: %s", deployment.pk, exc)
            continue
        queued += 1
    return queued


def drift_reports_requeue_stale(*, now: datetime | None = None) -> int:
    """Beat: send again the reports queued too long (their send was lost) or running on a dead worker.

    The job's claim keeps this safe: a report already taken by a live worker is not run twice.
    """
    now = now or timezone.now()
    stale = DriftReport.objects.filter(
        Q(job__status=JobStatus.QUEUED, job__created_at__lt=now - DRIFT_JOB_REQUEUE_AFTER)
        | Q(job__status=JobStatus.RUNNING, job__started_at__lt=now - DRIFT_JOB_STALE_AFTER)
    ).values_list("pk", flat=True)
    ids = list(stale)
    for report_id in ids:
        drift_report_execute_task.delay(report_id)
    if ids:
        logger.warning("queued drift reports again: %s", ids)
    return len(ids)
