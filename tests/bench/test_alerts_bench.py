"""Alerts benchmark: 1,000 rules over 100 deployments evaluated in one round (target: within one 30 s interval),
and the time from a figure crossing its threshold to the notification reaching a sink (target: at most the
rule's `for` plus one evaluation interval plus 5 s). Run with `make bench`.

The round reads telemetry's rollups (ten minutes of traffic per deployment, quantiles in SQL) and the latest
drift report; rules that share a deployment, a figure and a window share one query (`FigureCache`).
The latency part runs the beat's schedule in real time with the default interval (30 s) and `for` (30 s):
the figure crosses just after an evaluation (the worst case), the next one sees it pending, the one after
fires it, and the notification goes through the outbox to a local HTTP sink.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.alerts import services
from apps.alerts.models import Alert, AlertChannel, AlertRule
from tests.alerts.conftest import make_deployment, write_minutes
from tests.core.notifications.sinks import running_server

pytestmark = [pytest.mark.bench, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def no_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployments only carry telemetry here: their reconciler (which would start model servers) is not
    queued, since these tests commit for real and run tasks eagerly."""
    monkeypatch.setattr("apps.deployments.services._common.enqueue_on_commit", lambda *args: None)


DEPLOYMENTS = 100
RULES_PER_DEPLOYMENT = 10
ROUND_TARGET_SECONDS = 30.0
SLACK_SECONDS = 5.0
FIGURES = [
    ("error_rate", "gt", 0.01, 300),
    ("error_rate", "gt", 0.05, 900),
    ("latency_p50", "gt", 100, 300),
    ("latency_p90", "gt", 250, 300),
    ("latency_p99", "gt", 500, 300),
    ("throughput", "lt", 0.5, 300),
    ("throughput_drop", "gt", 0.5, 3600),
    ("drift_share", "ge", 0.5, 7200),
    ("no_data_minutes", "gt", 10, 60),
    ("replicas_not_ready", "gt", 0, 60),
]


def test_a_round_of_1000_rules_over_100_deployments(project, owner) -> None:
    deployments = [make_deployment(project, owner, f"bench-{index:03d}") for index in range(DEPLOYMENTS)]
    for index, deployment in enumerate(deployments):
        write_minutes(deployment, minutes=10, requests=200, errors=index % 7, latency_ms=5 + index * 7)
    AlertRule.objects.bulk_create(
        [
            AlertRule(
                project=project,
                deployment=deployment,
                name=f"{deployment.name}-{figure}-{window}",
                figure=figure,
                comparator=comparator,
                threshold=threshold,
                window_seconds=window,
                for_seconds=60,
            )
            for deployment in deployments
            for figure, comparator, threshold, window in FIGURES
        ]
    )
    assert AlertRule.objects.count() == DEPLOYMENTS * RULES_PER_DEPLOYMENT
    start = timezone.now()
    # The first round creates the alerts (pending where the condition holds), the second (after `for`) fires
    # them and records the notifications, the third is the steady state.
    rounds = [services.alert_rules_evaluate_due(now=start + timedelta(seconds=offset)) for offset in (0, 60, 90)]
    states = dict.fromkeys(("inactive", "pending", "firing", "nodata", "error"), 0)
    for state in Alert.objects.values_list("state", flat=True):
        states[state] += 1
    times = ", ".join(f"{result.seconds:.2f} s" for result in rounds)
    print(
        f"\nAlerts: {rounds[0].rules} rules over {DEPLOYMENTS} deployments; rounds {times} "
        f"(target < {ROUND_TARGET_SECONDS} s); transitions {[r.transitions for r in rounds]}; states {states}"
    )
    assert all(result.rules == DEPLOYMENTS * RULES_PER_DEPLOYMENT for result in rounds)
    assert states["error"] == 0 and states["firing"] > 0
    assert max(result.seconds for result in rounds) < ROUND_TARGET_SECONDS


def test_threshold_crossing_to_sink_latency(settings, project, owner, django_capture_on_commit_callbacks) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    interval = settings.ALERTS_EVALUATION_INTERVAL_SECONDS
    deployment = make_deployment(project, owner, "latency")
    with running_server() as sink:
        channel = AlertChannel.objects.create(
            project=project, name="sink", kind="webhook", config={"url": sink.url("/ok"), "secret": "x" * 20}
        )
        rule = services.alert_rule_create(
            project=project,
            actor=owner,
            deployment=deployment,
            channels=[channel],
            name="errors",
            figure="error_rate",
            comparator="gt",
            threshold=0.01,
            for_seconds=interval,
        )
        write_minutes(deployment, minutes=5, errors=0)
        services.alert_rules_evaluate_due()
        next_tick = time.monotonic() + interval
        write_minutes(deployment, minutes=5, errors=10)  # the figure crosses now, just after an evaluation
        crossed = time.monotonic()
        while not sink.received and time.monotonic() - crossed < rule.for_seconds + 2 * interval + SLACK_SECONDS:
            time.sleep(max(next_tick - time.monotonic(), 0))
            next_tick += interval
            services.alert_rules_evaluate_due()  # the beat's task; the outbox delivers after the commit
        assert sink.received, "no notification reached the sink"
        latency = sink.received[0].at - crossed
        bound = rule.for_seconds + interval + SLACK_SECONDS
        print(
            f"\nAlerts: threshold crossing to sink {latency:.2f} s "
            f"(for {rule.for_seconds} s, interval {interval} s, bound {bound} s)"
        )
        assert json.loads(sink.received[0].body)["type"] == "alert.firing"
        assert latency <= bound
