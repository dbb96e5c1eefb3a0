"""Figures added after the first release: prediction drift read from a drift report the monitoring engine
computed, and the events the deployment's model servers dropped in the window (from their cumulative shipping
reports)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.utils import timezone

from apps.alerts import services
from apps.alerts.models import Alert
from apps.monitoring.choices import ReferenceSource
from apps.monitoring.models import DriftReference, DriftReport
from apps.telemetry.services import IngestSource, shipping_report_record
from worker.monitoring.drift import drift_report, prediction_columns, reference_profile

pytestmark = pytest.mark.django_db


def store_report(deployment: Any, reference: DriftReference, current: dict, ended_ago: timedelta) -> DriftReport:
    """A drift report as monitoring stores it: the engine's result for `current` against the reference."""
    report = drift_report(reference_profile(*REFERENCE_COLUMNS), current)
    end = timezone.now() - ended_ago
    return DriftReport.objects.create(
        deployment=deployment,
        model_version=reference.model_version,
        reference=reference,
        window_start=end - timedelta(hours=1),
        window_end=end,
        result=report.to_dict(),
        drift_share=report.drift_share,
        dataset_drift=report.dataset_drift,
        n_rows=len(current["prediction"]),
    )


RNG = np.random.default_rng(7)
REFERENCE_COLUMNS = prediction_columns(
    y_pred=RNG.choice(["a", "b"], size=400, p=[0.8, 0.2]),
    proba=np.column_stack([np.full(400, 0.7), np.full(400, 0.3)]),
    classes=("a", "b"),
    task="classification",
)


def outputs(share_of_a: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    columns, _ = prediction_columns(
        y_pred=rng.choice(["a", "b"], size=300, p=[share_of_a, 1 - share_of_a]),
        proba=np.column_stack([np.full(300, 0.7), np.full(300, 0.3)]),
        classes=("a", "b"),
        task="classification",
    )
    return columns


def traffic_reference(deployment: Any) -> DriftReference:
    return DriftReference.objects.create(
        deployment=deployment,
        model_version=deployment.targets.get().model_version,
        source=ReferenceSource.TRAFFIC,
        window_start=timezone.now() - timedelta(days=2),
        window_end=timezone.now() - timedelta(days=1),
        profile_sha256="0" * 64,
        n_rows=400,
    )


def test_prediction_drift_fires_on_a_drifted_prediction_column_and_resolves(project, owner, deployment) -> None:
    rule = services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        name="predictions moved",
        figure="prediction_drift",
        comparator="ge",
        threshold=1,
        window_seconds=7200,
    )
    reference = traffic_reference(deployment)
    drifted = store_report(deployment, reference, outputs(0.2, seed=1), ended_ago=timedelta(minutes=30))
    entry = next(column for column in drifted.result["columns"] if column["column"] == "prediction")
    assert entry["test"] == "z" and entry["drifted"] is True and entry["statistic"] < 0.05

    t0 = timezone.now()
    services.alert_rules_evaluate_due(now=t0)
    alert = Alert.objects.get(rule=rule)
    assert (alert.state, alert.value) == ("firing", 1.0)

    # A later report whose predictions match the reference again: the flag is 0 and the alert resolves.
    stable = store_report(deployment, reference, outputs(0.8, seed=2), ended_ago=timedelta(minutes=1))
    entry = next(column for column in stable.result["columns"] if column["column"] == "prediction")
    assert entry["drifted"] is False
    services.alert_rules_evaluate_due(now=t0 + timedelta(seconds=30))
    alert.refresh_from_db()
    assert (alert.state, alert.value) == ("resolved", 0.0)
    assert [t.to_state for t in alert.transitions.order_by("at")] == ["firing", "resolved"]


def test_prediction_drift_without_a_tested_prediction_column_is_no_data(project, owner, deployment) -> None:
    rule = services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        name="predictions moved",
        figure="prediction_drift",
        comparator="ge",
        threshold=1,
        window_seconds=7200,
    )
    services.alert_rules_evaluate_due()
    alert = Alert.objects.get(rule=rule)
    assert alert.state == "nodata" and alert.reason == "no drift report ended in the last 2 h"

    # A report over inputs only (a training reference holds no predictions) says so.
    reference = traffic_reference(deployment)
    DriftReport.objects.create(
        deployment=deployment,
        model_version=reference.model_version,
        reference=reference,
        window_start=timezone.now() - timedelta(hours=1),
        window_end=timezone.now(),
        result={"columns": [{"column": "x", "statistic": 0.5, "drifted": False}]},
        drift_share=0.0,
    )
    services.alert_rules_evaluate_due(now=timezone.now() + timedelta(seconds=30))
    alert.refresh_from_db()
    assert alert.state == "nodata" and alert.value is None
    assert alert.reason.startswith("the latest drift report did not test the predictions")


def test_event_drops_count_the_increase_in_the_window_across_restarts(
    project, owner, deployment, webhook_channel, hook_server
) -> None:
    rule = services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        channels=[webhook_channel],
        name="dropping events",
        figure="event_drops",
        comparator="gt",
        threshold=0,
        window_seconds=300,
    )
    source = IngestSource(deployment_id=deployment.pk, project_id=deployment.project_id)

    def report(server: str, **dropped: int) -> None:
        shipping_report_record(source=source, server=server, dropped=dropped, buffered=0)

    # Drops from before the alert's first evaluation are history, not news.
    report("web-1:100", queue_full=40, too_large=2)
    t0 = timezone.now()

    def evaluate(seconds: int) -> Alert:
        services.alert_rules_evaluate_due(now=t0 + timedelta(seconds=seconds))
        return Alert.objects.get(rule=rule)

    alert = evaluate(0)
    assert alert.state == "nodata" and alert.reason.startswith("first reading")
    assert (evaluate(30).state, Alert.objects.get(rule=rule).value) == ("inactive", 0.0)
    report("web-1:100", queue_full=45, too_large=2)
    alert = evaluate(60)
    assert (alert.state, alert.value, alert.reason) == ("firing", 5.0, "5 > 0")
    # The process restarts under a new name; its counter starts from zero and every drop of it is new.
    report("web-1:200", queue_full=3)
    assert evaluate(90).value == 8.0
    # Five minutes after the last drop, the window holds none: resolved.
    alert = evaluate(90 + 300)
    assert (alert.state, alert.value) == ("resolved", 0.0)
    assert len(alert.figure_state["readings"]) <= 3
    # Another deployment's servers are not counted.
    other = IngestSource(deployment_id=deployment.pk + 1000, project_id=deployment.project_id)
    shipping_report_record(source=other, server="web-9:1", dropped={"queue_full": 99}, buffered=0)
    assert evaluate(420).value == 0.0
