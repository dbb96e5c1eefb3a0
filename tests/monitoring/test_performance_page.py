"""The performance page and `check_model_performance`: realised metrics per version with the labelled count, the
CBPE estimate with its assumptions, accuracy and predictions over time (checked against numpy on the logged
events), drift per column from stored reports; as viewer, editor, owner and outsider, and with no traffic."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.exceptions import NotFound, ValidationError
from apps.monitoring import charts, selectors, services
from apps.telemetry import selectors as telemetry
from apps.telemetry.services import prediction_labels_store
from tests.conftest import client_for
from tests.monitoring.conftest import log_traffic
from tests.monitoring.test_dashboard import ingest

pytestmark = pytest.mark.django_db
N = 400


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def labelled(deployment: Any, owner: Any) -> dict[str, Any]:
    """400 one-row predictions of a calibrated classifier over the last 50 minutes; the first 300 get labels."""
    rng = np.random.default_rng(3)
    version = deployment.targets.get().model_version
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=50)
    p_b = rng.uniform(0, 1, N)
    truth = np.where(rng.uniform(0, 1, N) < p_b, "b", "a")
    predicted = np.where(p_b > 0.5, "b", "a")
    moments = [start + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 50 * 60, N))]
    ingest(
        deployment,
        [
            {
                "request_id": f"r{i}",
                "deployment_id": deployment.pk,
                "version_id": version.pk,
                "outputs": [str(predicted[i])],
                "probabilities": [[float(1 - p_b[i]), float(p_b[i])]],
                "latency_ms": 3.0,
                "status": 200,
                "timestamp": moments[i].isoformat(),
            }
            for i in range(N)
        ],
    )
    items = [{"request_id": f"r{i}", "label": str(truth[i])} for i in range(300)]
    assert prediction_labels_store(actor=owner, project=deployment.project, items=items).stored == 300
    return {"truth": truth, "predicted": predicted, "moments": moments}


def test_trend_and_distribution_match_the_events(deployment: Any, labelled: dict[str, Any]) -> None:
    performance = selectors.deployment_performance(deployment=deployment, window="1h")
    assert performance.step == timedelta(minutes=5)
    correct = labelled["truth"][:300] == labelled["predicted"][:300]
    expected: dict[Any, list[int]] = {}
    for moment, hit in zip(labelled["moments"][:300], correct, strict=True):
        key = moment.replace(minute=moment.minute - moment.minute % 5, second=0)
        expected.setdefault(key, []).append(int(hit))
    trend = {point.start: (point.value, point.n) for point in performance.trend}
    assert trend == {key: (pytest.approx(np.mean(hits)), len(hits)) for key, hits in expected.items()}
    assert {point.metric for point in performance.trend} == {"accuracy"}
    distribution = performance.distribution
    assert distribution.kind == "classes" and distribution.n_rows == N and not distribution.truncated
    assert sum(distribution.classes["b"]) == int((labelled["predicted"] == "b").sum())
    assert sum(sum(counts) for counts in distribution.classes.values()) == N
    (version,) = performance.versions
    assert (version.predictions, version.labelled) == (N, 300)
    assert version.realised.accuracy == pytest.approx(correct.mean())
    assert version.estimate is not None and version.estimate.n_rows == 100
    assert performance.labels[(version.model_version_id, False)] == "v1"


def test_regression_outputs_give_quantiles_and_mae(deployment: Any, owner: Any) -> None:
    version = deployment.targets.get().model_version
    now = timezone.now()
    values = np.linspace(0, 10, 50)
    ingest(
        deployment,
        [
            {
                "request_id": f"v{i}",
                "deployment_id": deployment.pk,
                "version_id": version.pk,
                "outputs": [float(values[i])],
                "status": 200,
                "timestamp": (now - timedelta(minutes=2)).isoformat(),
            }
            for i in range(50)
        ],
    )
    items = [{"request_id": f"v{i}", "value": float(values[i]) + 1.5} for i in range(50)]
    prediction_labels_store(actor=owner, project=deployment.project, items=items)
    performance = selectors.deployment_performance(deployment=deployment, window="1h")
    assert performance.distribution.kind == "values"
    assert performance.distribution.quantiles["p50"] == [pytest.approx(np.quantile(values, 0.5))]
    assert [(p.metric, p.value, p.n) for p in performance.trend] == [("mae", pytest.approx(1.5), 50)]
    figure = charts.plot_prediction_distribution(performance.distribution)
    assert [trace.name for trace in figure.data] == ["p10", "p50", "p90"]


def test_charts_carry_trend_distribution_and_drift(deployment: Any, labelled: dict[str, Any], member: Any) -> None:
    performance = selectors.deployment_performance(deployment=deployment, window="1h")
    trend = charts.plot_accuracy_trends(performance.trend, performance.labels)
    assert trend.data[0].name == "v1 accuracy"
    assert list(trend.data[0].y) == [point.value for point in performance.trend]
    assert sum(trend.data[0].customdata) == 300
    predictions = charts.plot_prediction_distribution(performance.distribution)
    shares = np.array([trace.y for trace in predictions.data])
    assert np.allclose(shares.sum(axis=0), 1.0)
    log_traffic(deployment, rows=400, drifted=True, start=timezone.now() - timedelta(minutes=30))
    report = services.check_data_drift(deployment=deployment, actor=member, window=timedelta(hours=1))
    heatmap = charts.plot_drift_by_column([report])
    assert list(heatmap.data[0].y) == ["colour", "x"]
    psi = {column["column"]: column["psi"] for column in report.result["columns"]}
    assert [row[0] for row in heatmap.data[0].z] == [psi["colour"], psi["x"]]
    assert list(heatmap.data[0].x) == [f"#{report.pk} {report.window_end:%m-%d %H:%M}"]
    assert heatmap.data[0].zmax == max(0.25, psi["colour"], psi["x"])


def test_service_checks_the_role_and_window(
    deployment: Any, labelled: dict[str, Any], viewer: Any, outsider: Any
) -> None:
    performance = services.check_model_performance(deployment=deployment, actor=viewer, window="1h")
    assert performance.versions[0].labelled == 300
    with pytest.raises(NotFound):
        services.check_model_performance(deployment=deployment, actor=outsider)
    with pytest.raises(ValidationError) as error:
        services.check_model_performance(deployment=deployment, actor=viewer, window="5m")
    assert error.value.field == "window"


def test_page_as_each_role(
    deployment: Any, labelled: dict[str, Any], viewer: Any, member: Any, owner: Any, outsider: Any
) -> None:
    url = f"/monitoring/deployments/{deployment.pk}/performance/"
    for user in (viewer, member, owner):
        page = browser(user).get(url, {"window": "1h"})
        assert page.status_code == 200
        body = page.content.decode()
        assert "300 of 400 predictions labelled" in body
        assert 'data-testid="cbpe-assumptions"' in body and 'data-testid="chart-accuracy"' in body
        assert "NaN" not in body
    assert browser(outsider).get(url).status_code == 404
    answer = browser(viewer).get(url, {"window": "2d"})
    assert answer.status_code == 400 and "window" in answer.content.decode()
    dashboard = browser(viewer).get(f"/monitoring/deployments/{deployment.pk}/").content.decode()
    assert url in dashboard


def test_page_without_traffic_is_an_empty_state(deployment: Any, viewer: Any) -> None:
    page = browser(viewer).get(f"/monitoring/deployments/{deployment.pk}/performance/")
    body = page.content.decode()
    assert page.status_code == 200
    assert 'data-testid="performance-empty"' in body and 'data-testid="trend-empty"' in body
    assert 'data-testid="drift-empty"' in body and "NaN" not in body
    distribution = telemetry.prediction_distribution(
        deployment_id=deployment.pk,
        project_id=deployment.project_id,
        since=timezone.now() - timedelta(hours=1),
        until=timezone.now(),
        step=timedelta(minutes=5),
    )
    assert distribution.steps == [] and distribution.n_rows == 0


def test_trend_api_as_each_role_and_bad_input(
    deployment: Any, labelled: dict[str, Any], viewer: Any, member: Any, owner: Any, outsider: Any
) -> None:
    url = f"/api/v1/deployments/{deployment.pk}/performance-trend/"
    performance = selectors.deployment_performance(deployment=deployment, window="1h")
    for user in (viewer, member, owner):
        body = client_for(user).get(url, {"window": "1h"}).json()
        assert body["step_seconds"] == 300 and body["trend_truncated"] is False
        assert [(p["start"][:16], p["value"], p["n_labelled"]) for p in body["trend"]] == [
            (point.start.isoformat()[:16], pytest.approx(point.value), point.n) for point in performance.trend
        ]
        assert body["trend"][0]["label"] == "v1" and body["trend"][0]["metric"] == "accuracy"
        assert body["predictions"]["kind"] == "classes" and body["predictions"]["n_rows"] == N
        assert body["drift"] == []
    assert client_for(outsider).get(url).status_code == 404
    answer = client_for(viewer).get(url, {"window": "12h"})
    assert answer.status_code == 400 and "window" in answer.json()


def test_raw_reads_range_over_the_project_time_index(deployment: Any, labelled: dict[str, Any]) -> None:
    """Every read of the prediction log names the project: without it Postgres has no index starting with the
    deployment and the time, and scans the deployment's whole history (12 s for an hour of a 10M-row log)."""
    with CaptureQueriesContext(connection) as queries:
        selectors.deployment_performance(deployment=deployment, window="24h")
    reads = [query["sql"] for query in queries if 'FROM "telemetry_predictionlog"' in query["sql"]]
    by_key = [sql for sql in reads if '"telemetry_predictionlog"."id" IN (' in sql]
    by_window = [sql for sql in reads if sql not in by_key]
    assert len(by_window) >= 2  # the unlabelled rows and the prediction distribution
    for sql in by_window:
        where = sql.split('FROM "telemetry_predictionlog" WHERE')[1]
        assert f'"telemetry_predictionlog"."project_id" = {deployment.project_id}' in where, sql
    # The labelled sample is found in the record of labelled predictions (by project and window) and only its
    # rows are read from the log, by primary key: once, shared by the metrics and the trend.
    assert len(by_key) == 1
    records = [
        query["sql"]
        for query in queries
        if query["sql"].split(" WHERE ")[0].endswith('FROM "telemetry_labelledprediction"')
    ]
    assert records
    for sql in records:
        assert f'"telemetry_labelledprediction"."project_id" = {deployment.project_id}' in sql, sql


def test_page_states_the_sample_behind_the_metrics_and_the_estimate(
    deployment: Any, labelled: dict[str, Any], viewer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"/monitoring/deployments/{deployment.pk}/performance/"
    assert 'data-testid="sample-note"' not in browser(viewer).get(url, {"window": "1h"}).content.decode()
    monkeypatch.setattr(telemetry, "PERFORMANCE_ROW_LIMIT", 50)
    body = browser(viewer).get(url, {"window": "1h"}).content.decode()
    assert "300 of 400 predictions labelled" in body
    assert "Metrics from a uniform sample of 50 of the 300 labelled predictions." in body
    assert "(the latest 50 of 100 unlabelled predictions)" in body
    assert "a uniform sample of 50 labelled predictions per version" in body
    [version] = selectors.deployment_performance(deployment=deployment, window="1h").versions
    assert (version.labelled, version.labelled_sample, version.realised.n_labelled) == (300, 50, 50)
