"""The console's own Prometheus metrics at /metrics (docs/monitoring.md, "Prometheus and Grafana").

Two sources. The web process counts its HTTP requests in prometheus_client counters (set
PROMETHEUS_MULTIPROC_DIR, an empty folder shared by the web workers, and /metrics adds up every worker's
counts). Everything else is read when Prometheus scrapes, from the database and the broker: Celery task counts
and durations (counted by the workers' task signals into TaskMetric), queue depths, beat's and a worker's last
sign of life, and per deployment the figures of the telemetry rollups over the last whole minutes, replicas,
event-shipping drops and the latest drift report. A scrape costs a few indexed queries per deployment.

Access: with METRICS_TOKEN set, a request needs `Authorization: Bearer <token>`; without it, only requests
from the loopback interface are answered (a Prometheus on the same host, or a sidecar).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from apps.deployments.models import Deployment
from apps.monitoring import health
from apps.monitoring.models import TASK_BUCKET_FIELDS, TASK_DURATION_BUCKETS, DriftReport, Heartbeat, TaskMetric
from apps.registry.models import ModelVersion
from apps.telemetry import selectors as telemetry
from apps.telemetry.models import NO_VERSION

# Per-deployment traffic figures cover this many whole minutes before the current one (the rollups' grain).
TRAFFIC_WINDOW_MINUTES = 5
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Counted in the web process (in every web worker's own files under PROMETHEUS_MULTIPROC_DIR when it is set).
HTTP_REGISTRY = CollectorRegistry(auto_describe=True)
HTTP_REQUESTS = Counter(
    "mlops_http_requests",
    "HTTP requests answered by the console, by method, route and status.",
    ["method", "view", "status"],
    registry=HTTP_REGISTRY,
)
HTTP_DURATION = Histogram(
    "mlops_http_request_duration_seconds",
    "Time the console took to answer an HTTP request, by method and route.",
    ["method", "view"],
    buckets=HTTP_BUCKETS,
    registry=HTTP_REGISTRY,
)


class RequestMetricsMiddleware:
    """Counts every request by its route's name (never its path: ids would make a series per object)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or match.route) if match else "unmatched"
        HTTP_REQUESTS.labels(request.method, view, str(response.status_code)).inc()
        HTTP_DURATION.labels(request.method, view).observe(time.perf_counter() - started)
        return response


def _tasks() -> Iterator[Metric]:
    runs = CounterMetricFamily(
        "mlops_celery_tasks", "Celery tasks run by the workers, by task and outcome.", labels=["task", "outcome"]
    )
    durations = HistogramMetricFamily(
        "mlops_celery_task_duration_seconds", "Time Celery tasks ran, by task and outcome.", labels=["task", "outcome"]
    )
    for metric in TaskMetric.objects.all():
        runs.add_metric([metric.task, metric.outcome], metric.count)
        cumulative, buckets = 0, []
        for bound, field in zip((*TASK_DURATION_BUCKETS, float("inf")), TASK_BUCKET_FIELDS, strict=True):
            cumulative += getattr(metric, field)
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        durations.add_metric([metric.task, metric.outcome], buckets, metric.seconds_sum)
    yield runs
    yield durations


def _system() -> Iterator[Metric]:
    broker, queues = health.broker_and_queues()
    depth = GaugeMetricFamily("mlops_celery_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"])
    for queue in queues:
        if queue["depth"] is not None:
            depth.add_metric([queue["queue"]], queue["depth"])
    yield depth
    up = GaugeMetricFamily("mlops_up", "1 when a part of the console answers, else 0.", labels=["component"])
    up.add_metric(["database"], 1 if health.database_check()["status"] == health.OK else 0)
    if broker["status"] != health.UNKNOWN:
        up.add_metric(["broker"], 1 if broker["status"] == health.OK else 0)
    yield up
    seen = GaugeMetricFamily(
        "mlops_heartbeat_timestamp_seconds",
        "Unix time of the last sign of life: beat (it sent a task), worker (it ran the heartbeat task).",
        labels=["component"],
    )
    for beat in Heartbeat.objects.filter(name__in=["beat", "worker"]):
        seen.add_metric([beat.name], beat.seen_at.timestamp())
    yield seen


def _deployments() -> Iterator[Metric]:
    labels = ["deployment", "project"]
    rate = GaugeMetricFamily(
        "mlops_deployment_requests_per_second",
        f"Live predictions per second over the last {TRAFFIC_WINDOW_MINUTES} whole minutes, by model version.",
        labels=[*labels, "version"],
    )
    errors = GaugeMetricFamily(
        "mlops_deployment_error_ratio",
        f"Share of live predictions answered with a 5xx over the last {TRAFFIC_WINDOW_MINUTES} whole minutes.",
        labels=[*labels, "version"],
    )
    latency = GaugeMetricFamily(
        "mlops_deployment_latency_seconds",
        f"Latency quantiles of live predictions over the last {TRAFFIC_WINDOW_MINUTES} whole minutes "
        "(from the rollups' histogram).",
        labels=[*labels, "version", "quantile"],
    )
    replicas = GaugeMetricFamily(
        "mlops_deployment_replicas", "Model server replicas wanted and ready.", labels=[*labels, "state"]
    )
    lag = GaugeMetricFamily(
        "mlops_deployment_reconcile_lag_seconds",
        "Seconds since the reconciler last observed the deployment.",
        labels=labels,
    )
    dropped = GaugeMetricFamily(
        "mlops_deployment_events_dropped",
        "Prediction events the model servers dropped (sum over server processes that reported in a day).",
        labels=[*labels, "reason"],
    )
    drift = GaugeMetricFamily(
        "mlops_deployment_drift_share", "Share of drifted columns in the latest finished drift report.", labels=labels
    )
    dataset_drift = GaugeMetricFamily(
        "mlops_deployment_dataset_drift", "1 when the latest finished drift report found dataset drift.", labels=labels
    )
    drift_time = GaugeMetricFamily(
        "mlops_deployment_drift_report_timestamp_seconds", "End of the latest drift report's window.", labels=labels
    )
    now = timezone.now()
    end = telemetry.minute_floor(now)
    since = end - timedelta(minutes=TRAFFIC_WINDOW_MINUTES)
    deployments = list(Deployment.objects.active().select_related("project"))
    shipping = health._shipping([d.pk for d in deployments], now)
    numbers = dict(
        ModelVersion.objects.filter(model_id__in={d.registered_model_id for d in deployments}).values_list(
            "pk", "number"
        )
    )
    versions_of: dict[int, list[int]] = {}
    for pk, model_id in ModelVersion.objects.filter(pk__in=numbers).values_list("pk", "model_id"):
        versions_of.setdefault(model_id, []).append(pk)
    for deployment in deployments:
        names = [deployment.name, deployment.project.slug]
        stats = telemetry.version_window_stats(
            deployment_id=deployment.pk,
            version_ids=[*versions_of.get(deployment.registered_model_id, []), NO_VERSION],
            since=since,
            until=end,
        )
        for version_id, window in stats.items():
            if not window.requests:
                continue
            version = f"v{numbers[version_id]}" if version_id in numbers else "none"
            rate.add_metric([*names, version], window.requests / (TRAFFIC_WINDOW_MINUTES * 60))
            errors.add_metric([*names, version], window.errors / window.requests)
            for quantile, value in (("0.5", window.p50_ms), ("0.9", window.p90_ms), ("0.99", window.p99_ms)):
                if value is not None:
                    latency.add_metric([*names, version, quantile], value / 1000)
        observed = deployment.observed or {}
        ready = sum(1 for r in observed.get("replicas", []) if r.get("health") == "ready")
        replicas.add_metric([*names, "desired"], deployment.replicas)
        replicas.add_metric([*names, "ready"], ready)
        if deployment.observed_at is not None:
            lag.add_metric(names, (now - deployment.observed_at).total_seconds())
        for reason, count in shipping.get(deployment.pk, {}).get("dropped", {}).items():
            dropped.add_metric([*names, reason], count)
        latest = (
            DriftReport.objects.filter(deployment=deployment, drift_share__isnull=False)
            .only("drift_share", "dataset_drift", "window_end")
            .order_by("-window_end")
            .first()
        )
        if latest is not None:
            drift.add_metric(names, latest.drift_share)
            dataset_drift.add_metric(names, 1 if latest.dataset_drift else 0)
            drift_time.add_metric(names, latest.window_end.timestamp())
    yield from (rate, errors, latency, replicas, lag, dropped, drift, dataset_drift, drift_time)


class ConsoleCollector:
    """What /metrics reads from the database and the broker at scrape time."""

    def collect(self) -> Iterator[Metric]:
        yield from _tasks()
        yield from _system()
        yield from _deployments()


def _loopback(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _authorized(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return _loopback(request)
    given = request.headers.get("Authorization", "")
    return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())


def exposition() -> bytes:
    """The text Prometheus scrapes: the HTTP counters (every web worker's, in multiprocess mode) and the rest."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        http = CollectorRegistry()
        MultiProcessCollector(http)
    else:
        http = HTTP_REGISTRY
    console = CollectorRegistry(auto_describe=False)
    console.register(ConsoleCollector())
    return generate_latest(http) + generate_latest(console)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse(
            "A bearer token (METRICS_TOKEN) is required." if settings.METRICS_TOKEN else "Loopback only.",
            status=401 if settings.METRICS_TOKEN else 403,
            content_type="text/plain",
        )
        if settings.METRICS_TOKEN:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
