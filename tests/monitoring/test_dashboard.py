"""Dashboards: the rollup selectors (checked against numpy on the logged events), the page and its live part, and
the metrics API, as viewer, editor, owner and outsider; bad windows and versions are 400s naming the field, and a
deployment without traffic gets an empty state."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone

from apps.monitoring import charts, selectors
from apps.telemetry import selectors as telemetry
from apps.telemetry.models import LATENCY_BUCKETS_MS
from apps.telemetry.services import IngestSource, predictions_ingest
from tests.conftest import client_for
from tests.factories import ModelVersionFactory

pytestmark = pytest.mark.django_db
# Session, user, deployment, the statement over the rollups (with its savepoint and settings), version
# numbers, the version picker and the navigation badges: a fixed number, whatever the versions and steps.
QUERY_BUDGET = 11


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def histogram_quantile(latencies: np.ndarray, q: float) -> float:
    """Prometheus' histogram_quantile over the rollups' buckets, written independently of the SQL."""
    bounds = np.array([0.0, *LATENCY_BUCKETS_MS])
    counts = np.array([np.sum((latencies > lo) & (latencies <= hi)) for lo, hi in pairwise(bounds)])
    cumulative = np.cumsum(counts)
    rank = q * len(latencies)
    index = int(np.searchsorted(cumulative, rank))
    before = cumulative[index - 1] if index else 0
    return bounds[index] + (bounds[index + 1] - bounds[index]) * (rank - before) / counts[index]


def ingest(deployment: Any, events: list[dict]) -> None:
    source = IngestSource(
        deployment_id=deployment.pk,
        project_id=deployment.project_id,
        version_ids=frozenset(deployment.registered_model.versions.values_list("pk", flat=True)),
    )
    assert predictions_ingest(source=source, events=events).rejected == []


@pytest.fixture
def split(deployment: Any) -> dict[str, Any]:
    """A canary split: v1 answers 300 requests, v2 100 (a tenth of them 5xx) plus 50 shadow answers of v2, spread
    over the last 50 minutes; latencies lognormal."""
    v1 = deployment.targets.get().model_version
    v2 = ModelVersionFactory(model=deployment.registered_model, number=2)
    rng = np.random.default_rng(7)
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=50)
    plan = [(v1, False, 300, 0), (v2, False, 100, 10), (v2, True, 50, 0)]
    latencies: dict[tuple[int, bool], np.ndarray] = {}
    times: dict[tuple[int, bool], list[datetime]] = {}
    events = []
    for version, shadow, n, errors in plan:
        values = rng.lognormal(3, 1, n)
        moments = [start + timedelta(seconds=int(s)) for s in rng.integers(0, 50 * 60, n)]
        latencies[(version.pk, shadow)], times[(version.pk, shadow)] = values, moments
        for index in range(n):
            events.append(
                {
                    "request_id": f"{version.pk}-{index}",
                    "deployment_id": deployment.pk,
                    "version_id": version.pk,
                    "shadow": shadow,
                    "outputs": ["a"],
                    "latency_ms": float(values[index]),
                    "status": 500 if index < errors else 200,
                    "timestamp": moments[index].isoformat(),
                }
            )
    ingest(deployment, events)
    return {"v1": v1, "v2": v2, "latencies": latencies, "times": times, "start": start}


def test_totals_per_version_match_the_logged_events(deployment: Any, split: dict[str, Any]) -> None:
    dashboard = selectors.deployment_dashboard(deployment=deployment, window="1h")
    assert [series.label for series in dashboard.versions] == ["v1", "v2", "v2 (shadow)"]
    for series in dashboard.versions:
        values = split["latencies"][(series.model_version_id, series.shadow)]
        assert series.totals.requests == len(values)
        assert sum(series.totals.buckets) == len(values)
        assert series.totals.mean_ms == pytest.approx(values.mean())
        for key, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            assert getattr(series.totals, key) == pytest.approx(histogram_quantile(values, q))
        assert series.throughput_rps == pytest.approx(len(values) / 3600)
    assert dashboard.versions[1].totals.errors == 10
    assert dashboard.versions[1].totals.error_rate == pytest.approx(0.1)


def test_series_steps_sum_each_step_of_the_window(deployment: Any, split: dict[str, Any]) -> None:
    dashboard = selectors.deployment_dashboard(deployment=deployment, window="24h")
    assert dashboard.step == timedelta(minutes=15)
    v1 = dashboard.versions[0]
    moments = split["times"][(split["v1"].pk, False)]
    expected: dict[datetime, int] = {}
    for moment in moments:
        floored = moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)
        expected[floored] = expected.get(floored, 0) + 1
    assert {point.start: point.requests for point in v1.points} == expected
    assert all(point.start.minute % 15 == 0 for point in v1.points)
    one = selectors.deployment_dashboard(deployment=deployment, window="1h", version=split["v2"])
    assert [series.label for series in one.versions] == ["v2", "v2 (shadow)"]


def test_windows_cover_their_length_in_steps(deployment: Any) -> None:
    now = timezone.now()
    for window, (length, step) in selectors.DASHBOARD_WINDOWS.items():
        dashboard = selectors.deployment_dashboard(deployment=deployment, window=window, now=now)
        assert dashboard.until - dashboard.since == length and dashboard.step == step
        assert 60 <= length / step <= 170
        assert dashboard.empty and dashboard.versions == []
    assert telemetry.rollup_window(
        deployment_id=deployment.pk, since=now - timedelta(hours=1), until=now, step=timedelta(minutes=1)
    ) == ([], [])


def test_charts_carry_the_dashboards_numbers(deployment: Any, split: dict[str, Any]) -> None:
    dashboard = selectors.deployment_dashboard(deployment=deployment, window="1h")
    versions = dashboard.versions
    throughput = charts.plot_throughput(versions, dashboard.step)
    assert [trace.name for trace in throughput.data] == ["v1", "v2", "v2 (shadow)"]
    assert sum(throughput.data[0].y) == 300  # one-minute steps: requests per minute are the counts
    errors = charts.plot_error_rates(versions)
    v2_points = versions[1].points
    assert list(errors.data[1].y) == [point.errors / point.requests for point in v2_points]
    latency = charts.plot_latency_quantiles(versions)
    assert [trace.name for trace in latency.data[:3]] == ["v1 p50", "v1 p90", "v1 p99"]
    assert list(latency.data[2].y) == [point.p99_ms for point in versions[0].points]
    distribution = charts.plot_latency_distribution(versions)
    assert list(distribution.data[0].x) == charts.latency_bucket_labels()
    assert sum(distribution.data[0].y) == pytest.approx(1.0)
    assert list(distribution.data[2].customdata) == list(versions[2].totals.buckets)


def test_page_and_live_part_as_each_role(
    deployment: Any, split: dict[str, Any], viewer: Any, member: Any, owner: Any, outsider: Any
) -> None:
    url = f"/monitoring/deployments/{deployment.pk}/"
    for user in (viewer, member, owner):
        page = browser(user).get(url, {"window": "1h"})
        assert page.status_code == 200
        body = page.content.decode()
        assert 'data-testid="dashboard-table"' in body and "v2 (shadow)" in body
        assert "NaN" not in body and "nan" not in body.lower().replace("nanos", "")
    assert browser(outsider).get(url).status_code == 404
    assert browser(outsider).get(f"{url}live/").status_code == 404
    client = browser(viewer)
    live = client.get(f"{url}live/", {"window": "1h"})
    assert live.status_code == 200 and live["ETag"]
    again = client.get(f"{url}live/", {"window": "1h"}, HTTP_IF_NONE_MATCH=live["ETag"])
    assert again.status_code == 304 and again["HX-Reswap"] == "none"
    listing = client.get("/monitoring/deployments/").content.decode()
    assert f"/monitoring/deployments/{deployment.pk}/" in listing
    assert (
        f"/monitoring/deployments/{deployment.pk}/"
        not in browser(outsider).get("/monitoring/deployments/").content.decode()
    )
    assert f"/monitoring/deployments/{deployment.pk}/" in client.get(deployment.get_absolute_url()).content.decode()


def test_page_bad_input_and_empty_state(deployment: Any, viewer: Any) -> None:
    client = browser(viewer)
    url = f"/monitoring/deployments/{deployment.pk}/"
    empty = client.get(url)
    assert empty.status_code == 200 and 'data-testid="dashboard-empty"' in empty.content.decode()
    for params, word in (({"window": "2h"}, "window"), ({"version": "9"}, "version"), ({"version": "x"}, "version")):
        answer = client.get(url, params)
        assert answer.status_code == 400 and word in answer.content.decode()


def test_api_as_each_role_and_bad_input(
    deployment: Any, split: dict[str, Any], viewer: Any, member: Any, owner: Any, outsider: Any
) -> None:
    url = f"/api/v1/deployments/{deployment.pk}/metrics/"
    for user in (viewer, member, owner):
        body = client_for(user).get(url, {"window": "1h"}).json()
        assert body["window"] == "1h" and body["step_seconds"] == 60 and not body["empty"]
        assert [(v["version"], v["shadow"], v["requests"]) for v in body["versions"]] == [
            (1, False, 300),
            (2, False, 100),
            (2, True, 50),
        ]
        assert sum(point["requests"] for point in body["versions"][0]["series"]) == 300
        assert len(body["versions"][0]["latency_histogram"]) == len(body["latency_buckets_ms"])
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(viewer).get("/api/v1/deployments/999999/metrics/").status_code == 404
    only = client_for(viewer).get(url, {"window": "1h", "version": 2}).json()
    assert [v["label"] for v in only["versions"]] == ["v2", "v2 (shadow)"]
    for params, field in (({"window": "90m"}, "window"), ({"version": "3"}, "version")):
        answer = client_for(viewer).get(url, params)
        assert answer.status_code == 400 and field in answer.json()


def test_api_without_traffic_is_empty_not_nan(deployment: Any, viewer: Any) -> None:
    answer = client_for(viewer).get(f"/api/v1/deployments/{deployment.pk}/metrics/", {"window": "30d"})
    assert answer.status_code == 200
    assert answer.json()["empty"] is True and answer.json()["versions"] == []
    assert "NaN" not in answer.content.decode()


def test_page_queries_do_not_grow_with_versions_or_steps(
    deployment: Any, split: dict[str, Any], viewer: Any, django_assert_max_num_queries: Any
) -> None:
    client = browser(viewer)
    url = f"/monitoring/deployments/{deployment.pk}/"
    with django_assert_max_num_queries(QUERY_BUDGET):
        assert client.get(url, {"window": "30d"}).status_code == 200
    ModelVersionFactory(model=deployment.registered_model, number=3)
    with django_assert_max_num_queries(QUERY_BUDGET):
        assert client.get(f"{url}live/", {"window": "1h"}).status_code == 200
