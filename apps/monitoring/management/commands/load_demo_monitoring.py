"""`manage.py load_demo_monitoring`: two days of logged traffic for the demo iris deployment, a drifted last
window, late labels, a traffic reference and drift reports, so the monitoring pages have something to show.

The predictions are the deployed version's own (its bundle loaded from the artifact store, as a model server
does), logged through telemetry's ingest as a model server ships them, with timestamps over the last two days;
nothing needs a model server, a worker or Redis, so it runs on the zero-setup SQLite default. Idempotent: the
request ids are fixed, so a second run stores nothing again, and reports already made are not made again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.core.artifacts import get_artifact_store
from apps.deployments.models import Deployment
from apps.monitoring import services
from apps.monitoring.choices import ReferenceSource
from apps.monitoring.models import DriftReference, DriftReport
from apps.telemetry.models import PredictionLog
from apps.telemetry.services import IngestSource, prediction_labels_store, predictions_ingest
from serving.loader import load_predictor
from worker.datasets.demo import demo_frame

DEPLOYMENT_NAME = "iris"
HOURS = 48
# The last DRIFT_HOURS hours are drifted: petals measured 1 cm longer and wider, sepals narrower.
DRIFT_HOURS = 6
EVENTS_PER_HOUR = 20
MAX_ROWS_PER_EVENT = 3
# Labels arrive for most of the older traffic and for few of the drifted hours: they come late.
LABELLED_SHARE_OLD = 0.8
LABELLED_SHARE_RECENT = 0.1
ERROR_SHARE = 0.005
# Drift reports over blocks of this many hours draw the drift share over time.
REPORT_HOURS = 6
REQUEST_PREFIX = "demo-monitoring-"
INGEST_BATCH = 1_000
SEED = 7


def _iris(version: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """The iris measurements under the version's input names (the four columns, in sklearn's order), and the
    species of each row."""
    frame = demo_frame("iris")
    names = [entry.get("name") for entry in (version.signature or {}).get("inputs") or []]
    if len(names) != 4:
        raise CommandError(f"{version} does not take the four iris measurements; its inputs are {names}.")
    species = frame.pop("target").to_numpy()
    frame.columns = names
    return frame, species


class Command(BaseCommand):
    help = (
        "Send two days of logged traffic to the demo iris deployment (the last 6 hours drifted), late labels, a "
        "traffic reference and drift reports (idempotent; SQLite is enough). Run after load_demo_deployment."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        deployment = (
            Deployment.objects.select_related("project", "registered_model").filter(name=DEPLOYMENT_NAME).first()
        )
        if deployment is None:
            raise CommandError("Run `manage.py load_demo_deployment` first (there is no iris deployment).")
        admin = get_user_model().objects.filter(is_superuser=True).order_by("pk").first()
        if admin is None:
            raise CommandError("Run `manage.py seed_demo` first (there is no admin user).")
        version = services.live_version(deployment)
        first_id = f"{REQUEST_PREFIX}{0:06d}"
        if PredictionLog.objects.filter(deployment_id=deployment.pk, request_id=first_id).exists():
            self.stdout.write("Demo traffic already logged.")
            # The first event was logged in the first minute of the first hour.
            first = PredictionLog.objects.get(deployment_id=deployment.pk, request_id=first_id).created_at
            start = first.replace(minute=0, second=0, microsecond=0)
        else:
            start = self._log_traffic(deployment, version, admin)
        self._reports(deployment, admin, start)

    def _log_traffic(self, deployment: Deployment, version: Any, admin: Any) -> datetime:
        predictor = load_predictor(get_artifact_store().verified_path(version.sha256), expected_sha256=version.sha256)
        frame, species = _iris(version)
        rng = np.random.default_rng(SEED)
        now = timezone.now().replace(minute=0, second=0, microsecond=0)
        start = now - timedelta(hours=HOURS)
        events, labels = [], []
        for hour in range(HOURS):
            drifted = hour >= HOURS - DRIFT_HOURS
            for slot in range(EVENTS_PER_HOUR):
                index = len(events)
                rows = rng.integers(0, len(frame), rng.integers(1, MAX_ROWS_PER_EVENT + 1))
                inputs = frame.iloc[rows].reset_index(drop=True) + rng.normal(0, 0.15, (len(rows), 4))
                if drifted:
                    inputs += [0.0, -0.4, 1.0, 1.0]
                inputs = inputs.round(2)
                moment = start + timedelta(
                    hours=hour, seconds=int(slot * 3600 / EVENTS_PER_HOUR) + int(rng.integers(60))
                )
                request_id = f"{REQUEST_PREFIX}{index:06d}"
                failed = rng.random() < ERROR_SHARE
                event: dict[str, Any] = {
                    "request_id": request_id,
                    "deployment_id": deployment.pk,
                    "version_id": version.pk,
                    "inputs": {name: inputs[name].tolist() for name in inputs.columns},
                    "latency_ms": float(rng.lognormal(np.log(4.0 if not drifted else 6.0), 0.5)),
                    "status": 500 if failed else 200,
                    "timestamp": moment.isoformat(),
                }
                if failed:
                    event["error"] = "demo: an injected server error"
                else:
                    proba = predictor.predict_proba(inputs)
                    event["outputs"] = [predictor.classes[i] for i in np.argmax(proba, axis=1)]
                    event["probabilities"] = np.round(proba, 4).tolist()
                    share = LABELLED_SHARE_RECENT if drifted else LABELLED_SHARE_OLD
                    if rng.random() < share:
                        labels.append({"request_id": request_id, "label": species[rows].tolist()})
                events.append(event)
        source = IngestSource(
            deployment_id=deployment.pk,
            project_id=deployment.project_id,
            version_ids=frozenset(deployment.registered_model.versions.values_list("pk", flat=True)),
        )
        for offset in range(0, len(events), INGEST_BATCH):
            predictions_ingest(source=source, events=events[offset : offset + INGEST_BATCH])
        stored = prediction_labels_store(
            actor=admin, project=deployment.project, items=labels, deployment_id=deployment.pk
        )
        self.stdout.write(
            f"Logged {len(events)} predictions over {HOURS} hours (the last {DRIFT_HOURS} drifted) and "
            f"{stored.stored} late labels."
        )
        return start

    def _reports(self, deployment: Deployment, admin: Any, start: datetime) -> None:
        version = services.live_version(deployment)
        reference_end = start + timedelta(hours=REPORT_HOURS * 2)
        if not DriftReference.objects.filter(
            deployment=deployment, model_version=version, source=ReferenceSource.TRAFFIC, window_start=start
        ).exists():
            # The first 12 hours of traffic are the reference: the newest reference of a version is the one
            # reports use, and this one includes the model's outputs (prediction drift).
            services.drift_reference_build(
                deployment=deployment,
                version=version,
                source=ReferenceSource.TRAFFIC,
                actor=admin,
                window_start=start,
                window_end=reference_end,
            )
        made, last = 0, None
        for block_start in range(REPORT_HOURS * 2, HOURS, REPORT_HOURS):
            window_start = start + timedelta(hours=block_start)
            window_end = window_start + timedelta(hours=REPORT_HOURS)
            if DriftReport.objects.filter(
                deployment=deployment, window_start=window_start, window_end=window_end
            ).exists():
                continue
            last = services.check_data_drift(deployment=deployment, actor=None, start=window_start, end=window_end)
            made += 1
        if last is not None:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Made {made} drift reports against the first {REPORT_HOURS * 2} hours of traffic; the latest "
                    f"({last.window_start:%Y-%m-%d %H:%M} – {last.window_end:%H:%M} UTC, drifted): "
                    f"{last.result.get('n_drifted', 0)} of {last.result.get('n_tested', 0)} columns drifted, "
                    f"at {last.get_absolute_url()}"
                )
            )
        else:
            self.stdout.write("Demo drift reports already made.")
