"""Rules evaluated over real telemetry rollups and drift reports: pending → firing → resolved with the values
recorded, one notification per group start, reminders per repeat interval, resolved on by default, silences,
no data made visible, the seed's defaults, and two workers never evaluating one rule at once."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.alerts import services
from apps.alerts.models import Alert, AlertNotification, AlertRule, AlertTransition
from apps.monitoring.choices import ReferenceSource
from apps.monitoring.models import DriftReference, DriftReport
from tests.alerts.conftest import make_deployment, write_minutes

pytestmark = pytest.mark.django_db


def error_rule(project: Any, owner: Any, deployment: Any, channel: Any, **extra: Any) -> AlertRule:
    values = {
        "name": "errors",
        "figure": "error_rate",
        "comparator": "gt",
        "threshold": 0.01,
        "window_seconds": 300,
        "for_seconds": 60,
        **extra,
    }
    return services.alert_rule_create(project=project, actor=owner, deployment=deployment, channels=[channel], **values)


def evaluate_at(now: Any, capture: Any) -> services.RoundResult:
    with capture(execute=True):
        return services.alert_rules_evaluate_due(now=now)


def bodies(hook_server: Any) -> list[dict]:
    return [json.loads(received.body) for received in hook_server.received]


def test_error_rate_fires_after_for_notifies_once_reminds_and_resolves(
    project, owner, deployment, webhook_channel, hook_server, django_capture_on_commit_callbacks
) -> None:
    rule = error_rule(project, owner, deployment, webhook_channel)
    write_minutes(deployment, minutes=5, requests=100, errors=5)  # 5 % errors
    t0 = timezone.now()
    for seconds in (0, 30, 60, 90):
        evaluate_at(t0 + timedelta(seconds=seconds), django_capture_on_commit_callbacks)
    alert = Alert.objects.get(rule=rule)
    assert alert.state == "firing" and alert.value == pytest.approx(0.05) and alert.threshold == 0.01
    history = list(
        AlertTransition.objects.filter(alert=alert).order_by("at").values_list("from_state", "to_state", "at")
    )
    assert [(a, b) for a, b, _ in history] == [("inactive", "pending"), ("pending", "firing")]
    assert history[1][2] - history[0][2] == timedelta(seconds=60)
    [firing] = bodies(hook_server)
    assert firing["type"] == "alert.firing" and firing["status"] == "firing"
    assert firing["alerts"][0]["deployment"] == "iris" and firing["alerts"][0]["value"] == pytest.approx(0.05)
    assert firing["idempotency_key"] == str(AlertNotification.objects.get(kind="firing").key)
    assert firing["url"].endswith(rule.get_absolute_url())

    # Still firing: nothing more until the repeat interval (4 h by default) has passed.
    write_minutes(deployment, minutes=5, requests=100, errors=5, end=t0 + timedelta(hours=2))
    evaluate_at(t0 + timedelta(hours=2), django_capture_on_commit_callbacks)
    assert len(hook_server.received) == 1
    write_minutes(deployment, minutes=5, requests=100, errors=5, end=t0 + timedelta(hours=4, minutes=1))
    evaluate_at(t0 + timedelta(hours=4, minutes=1, seconds=30), django_capture_on_commit_callbacks)
    assert [body["type"] for body in bodies(hook_server)] == ["alert.firing", "alert.repeat"]

    # Healthy traffic: resolved, said once (resolved notifications are on by default).
    end = t0 + timedelta(hours=5)
    write_minutes(deployment, minutes=6, requests=100, errors=0, end=end)
    evaluate_at(end + timedelta(seconds=30), django_capture_on_commit_callbacks)
    evaluate_at(end + timedelta(seconds=60), django_capture_on_commit_callbacks)
    assert [body["type"] for body in bodies(hook_server)] == ["alert.firing", "alert.repeat", "alert.resolved"]
    alert.refresh_from_db()
    assert alert.state == "resolved" and alert.value == 0.0


def test_a_rule_that_is_not_due_is_not_evaluated(project, owner, deployment, webhook_channel) -> None:
    error_rule(project, owner, deployment, webhook_channel)
    now = timezone.now()
    assert services.alert_rules_evaluate_due(now=now).rules == 1
    assert services.alert_rules_evaluate_due(now=now + timedelta(seconds=10)).rules == 0
    assert services.alert_rules_evaluate_due(now=now + timedelta(seconds=30)).rules == 1


def test_without_traffic_the_alert_shows_no_data(project, owner, deployment, webhook_channel) -> None:
    rule = error_rule(project, owner, deployment, webhook_channel)
    services.alert_rules_evaluate_due()
    alert = Alert.objects.get(rule=rule)
    assert alert.state == "nodata" and alert.value is None
    assert alert.reason == "no predictions in the last 5 min"
    assert alert.transitions.get().to_state == "nodata"


def test_a_silenced_alert_changes_state_without_notifying(
    project, owner, deployment, webhook_channel, hook_server, django_capture_on_commit_callbacks
) -> None:
    rule = error_rule(project, owner, deployment, webhook_channel, for_seconds=0, labels={"team": "ml"})
    now = timezone.now()
    services.silence_create(
        project=project,
        actor=owner,
        comment="maintenance",
        matchers={"team": "ml"},
        starts_at=now,
        ends_at=now + timedelta(minutes=1),
    )
    write_minutes(deployment, minutes=5, errors=10)
    evaluate_at(now, django_capture_on_commit_callbacks)
    alert = Alert.objects.get(rule=rule)
    assert alert.state == "firing" and alert.silenced and alert.transitions.get().silenced
    assert hook_server.received == []
    # The silence ends while the alert still fires: now it is said.
    evaluate_at(now + timedelta(minutes=1), django_capture_on_commit_callbacks)
    assert [body["type"] for body in bodies(hook_server)] == ["alert.firing"]


def test_a_rule_on_every_deployment_of_a_model_groups_its_alerts(
    project, owner, webhook_channel, hook_server, django_capture_on_commit_callbacks
) -> None:
    first = make_deployment(project, owner, "churn-a")
    second = make_deployment(project, owner, "churn-b", model=first.registered_model)
    services.alert_rule_create(
        project=project,
        actor=owner,
        registered_model=first.registered_model,
        channels=[webhook_channel],
        name="latency",
        figure="latency_p99",
        comparator="gt",
        threshold=500,
    )
    write_minutes(first, minutes=5, latency_ms=800)
    write_minutes(second, minutes=5, latency_ms=800)
    evaluate_at(timezone.now(), django_capture_on_commit_callbacks)
    [body] = bodies(hook_server)
    assert sorted(alert["deployment"] for alert in body["alerts"]) == ["churn-a", "churn-b"]
    assert body["subject"].startswith("[FIRING:2] latency")
    # p99 interpolated in the 500–1000 ms bucket, as telemetry computes it.
    assert all(500 < alert["value"] <= 1000 for alert in body["alerts"])


def test_the_seed_defaults_in_one_click(project, owner, deployment, member, viewer) -> None:
    rules = services.alert_rules_create_defaults(deployment=deployment, actor=member)
    assert sorted(rule.condition_display for rule in rules) == [
        "Accuracy (from labels) < validation value -0.05",
        "Drift share (latest drift report) >= 0.5",
        "Error rate (5xx share) > 0.01",
        "Latency p99 (ms) > 500",
    ]
    assert services.alert_rules_create_defaults(deployment=deployment, actor=member) == []
    reference = DriftReference.objects.create(
        deployment=deployment,
        model_version=deployment.targets.get().model_version,
        source=ReferenceSource.TRAFFIC,
        window_start=timezone.now() - timedelta(days=2),
        window_end=timezone.now() - timedelta(days=1),
        profile_sha256="0" * 64,
        n_rows=10,
    )
    DriftReport.objects.create(
        deployment=deployment,
        model_version=reference.model_version,
        reference=reference,
        window_start=timezone.now() - timedelta(hours=1),
        window_end=timezone.now() - timedelta(minutes=5),
        drift_share=0.6,
    )
    write_minutes(deployment, minutes=5, latency_ms=40)
    services.alert_rules_evaluate_due()
    states = {
        alert.rule.figure: (alert.state, alert.value, alert.threshold, alert.reason) for alert in Alert.objects.all()
    }
    assert states["drift_share"][:3] == ("firing", 0.6, 0.5)
    assert states["error_rate"][:2] == ("inactive", 0.0)
    assert states["latency_p99"][0] == "inactive" and 25 < states["latency_p99"][1] <= 50
    # No label arrived: accuracy is visibly without data, not silently fine.
    assert states["accuracy"][0] == "nodata"


@pytest.mark.django_db(transaction=True)
def test_two_workers_never_evaluate_one_rule_at_once(project, owner, deployment) -> None:
    rules = [
        services.alert_rule_create(
            project=project,
            actor=owner,
            deployment=deployment,
            name=f"r{i}",
            figure="throughput",
            comparator="lt",
            threshold=1,
        )
        for i in range(2)
    ]
    locked, release = threading.Event(), threading.Event()

    def hold_first_rule() -> None:
        with transaction.atomic():
            AlertRule.objects.select_for_update().get(pk=rules[0].pk)
            locked.set()
            release.wait(10)
        connection.close()

    worker = threading.Thread(target=hold_first_rule)
    worker.start()
    assert locked.wait(10)
    result = services.alert_rules_evaluate_due()
    release.set()
    worker.join()
    assert result.rules == 1  # the locked rule was skipped, not waited for and not evaluated twice
    assert list(Alert.objects.values_list("rule_id", flat=True)) == [rules[1].pk]
    assert services.alert_rules_evaluate_due().rules == 1
    assert Alert.objects.count() == 2
