"""Prediction drift (the predicted class and each class probability, checked against scipy) and per-column
test and threshold overrides set from the API and the page, as viewer, editor, owner and outsider; bad values
are a 400 naming the field."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone
from scipy import stats

from apps.monitoring import services
from apps.monitoring.choices import ReferenceSource
from apps.monitoring.models import DriftReport, DriftSettings
from apps.telemetry.services import IngestSource, predictions_ingest
from tests.conftest import client_for

pytestmark = pytest.mark.django_db
ROWS = 20


def log_predictions(deployment: Any, *, events: int, p_b: float, start: datetime, seed: int) -> tuple[list, list]:
    """Events of ROWS rows with outputs and probabilities: P(b) per row ~ Beta around `p_b`, the class its argmax.
    Returns the predictions and the probabilities of class "a" logged."""
    rng = np.random.default_rng(seed)
    version_id = deployment.targets.get().model_version_id
    batch, predictions, proba_a = [], [], []
    for index in range(events):
        p = rng.beta(20 * p_b, 20 * (1 - p_b), ROWS)
        outputs = ["b" if value > 0.5 else "a" for value in p]
        probabilities = [[1 - value, value] for value in p]
        predictions += outputs
        proba_a += [row[0] for row in probabilities]
        batch.append(
            {
                "request_id": f"{seed}-{index}",
                "deployment_id": deployment.pk,
                "version_id": version_id,
                "inputs": {"x": rng.normal(0, 1, ROWS).tolist(), "colour": ["red"] * ROWS},
                "outputs": outputs,
                "probabilities": probabilities,
                "latency_ms": 1.0,
                "status": 200,
                "timestamp": (start + timedelta(seconds=index)).isoformat(),
            }
        )
    source = IngestSource(
        deployment_id=deployment.pk,
        project_id=deployment.project_id,
        version_ids=frozenset(deployment.registered_model.versions.values_list("pk", flat=True)),
    )
    assert predictions_ingest(source=source, events=batch).rejected == []
    return predictions, proba_a


@pytest.fixture
def traffic_reference(deployment: Any, member: Any) -> tuple[list, list]:
    now = timezone.now()
    logged = log_predictions(deployment, events=20, p_b=0.3, start=now - timedelta(hours=5), seed=1)
    services.drift_reference_build(
        deployment=deployment,
        source=ReferenceSource.TRAFFIC,
        actor=member,
        window_start=now - timedelta(hours=6),
        window_end=now - timedelta(hours=4),
    )
    return logged


def run(deployment: Any, member: Any, capture: Any) -> DriftReport:
    with capture(execute=True):
        report = services.drift_report_run(deployment=deployment, actor=member, window=timedelta(hours=2))
    report.refresh_from_db()
    return report


def test_prediction_and_class_probability_drift_match_scipy(
    deployment: Any, member: Any, traffic_reference: tuple[list, list], django_capture_on_commit_callbacks: Any
) -> None:
    reference_predictions, reference_proba = traffic_reference
    current_predictions, current_proba = log_predictions(
        deployment, events=15, p_b=0.6, start=timezone.now() - timedelta(hours=1), seed=2
    )
    report = run(deployment, member, django_capture_on_commit_callbacks)
    columns = {column["column"]: column for column in report.result["columns"]}
    # 400 reference rows: p-value tests. The predicted class has two values: the z-test, whose p-value is the
    # uncorrected two-sample chi-square's.
    table = np.array([[reference_predictions.count(c), current_predictions.count(c)] for c in ("a", "b")])
    expected = stats.chi2_contingency(table, correction=False).pvalue
    assert columns["prediction"]["test"] == "z"
    assert columns["prediction"]["statistic"] == pytest.approx(expected, rel=1e-9)
    assert columns["prediction"]["drifted"] is True
    assert columns["proba:a"]["test"] == "ks"
    assert columns["proba:a"]["statistic"] == pytest.approx(stats.ks_2samp(reference_proba, current_proba).pvalue)
    assert columns["proba:a"]["drifted"] is True and columns["proba:b"]["drifted"] is True
    assert set(report.histograms) >= {"prediction", "proba:a", "proba:b"}


def test_settings_change_the_tests_thresholds_share_and_prediction_drift(
    deployment: Any, member: Any, traffic_reference: Any, django_capture_on_commit_callbacks: Any
) -> None:
    log_predictions(deployment, events=15, p_b=0.6, start=timezone.now() - timedelta(hours=1), seed=2)
    answer = client_for(member).put(
        f"/api/v1/drift-settings/{deployment.pk}/",
        {
            "columns": {"x": {"test": "psi", "threshold": 5.0}, "proba:a": {"test": None, "threshold": 1e-300}},
            "drift_share": 1.0,
            "prediction_drift": True,
        },
        format="json",
    )
    assert answer.status_code == 200, answer.json()
    report = run(deployment, member, django_capture_on_commit_callbacks)
    columns = {column["column"]: column for column in report.result["columns"]}
    assert columns["x"]["test"] == "psi" and columns["x"]["threshold"] == 5.0 and columns["x"]["drifted"] is False
    assert columns["x"]["statistic"] == columns["x"]["psi"]
    assert columns["proba:a"]["threshold"] == 1e-300 and columns["proba:a"]["drifted"] is False
    assert report.result["drift_share_threshold"] == 1.0 and report.dataset_drift is False
    client_for(member).put(f"/api/v1/drift-settings/{deployment.pk}/", {"prediction_drift": False}, format="json")
    report = run(deployment, member, django_capture_on_commit_callbacks)
    assert {column["column"] for column in report.result["columns"]} == {"x", "colour"}
    # Left-out fields kept their values.
    assert DriftSettings.objects.get().drift_share == 1.0


def test_settings_api_by_role_and_bad_values(
    deployment: Any, viewer: Any, member: Any, owner: Any, outsider: Any
) -> None:
    url = f"/api/v1/drift-settings/{deployment.pk}/"
    body = client_for(viewer).get(url).json()
    assert body["columns"] == {} and body["drift_share"] == 0.5 and body["prediction_drift"] is True
    assert body["available_columns"] == {
        "x": "numeric",
        "colour": "categorical",
        "prediction": "categorical",
        "proba:a": "numeric",
        "proba:b": "numeric",
    }
    change = {"columns": {"x": {"test": "ks", "threshold": 0.01}}}
    assert client_for(viewer).put(url, change, format="json").status_code == 403
    assert client_for(outsider).get(url).status_code == 404
    assert client_for(outsider).put(url, change, format="json").status_code == 404
    for user in (member, owner):
        answer = client_for(user).put(url, change, format="json")
        assert answer.status_code == 200 and answer.json()["columns"] == {"x": {"test": "ks", "threshold": 0.01}}
    for bad, field in (
        ({"columns": {"nope": {"test": "ks"}}}, "columns.nope"),
        ({"columns": {"colour": {"test": "wasserstein"}}}, "columns.colour.test"),
        ({"columns": {"x": {"test": "t-test"}}}, "columns.x.test"),
        ({"columns": {"x": {"threshold": -1}}}, "columns.x.threshold"),
        ({"columns": {"x": {"test": "ks", "threshold": 2}}}, "columns.x.threshold"),
        ({"columns": {"x": {"tset": "ks"}}}, "columns.x"),
        ({"columns": ["x"]}, "columns"),
        ({"drift_share": 0}, "drift_share"),
        ({"drift_share": "half"}, "drift_share"),
        ({"prediction_drift": "yes"}, "prediction_drift"),
    ):
        answer = client_for(member).put(url, bad, format="json")
        assert answer.status_code == 400 and field in answer.json(), (bad, answer.json())
    # Nothing bad was stored.
    assert DriftSettings.objects.get().columns == {"x": {"test": "ks", "threshold": 0.01}}


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_settings_page_by_role(deployment: Any, viewer: Any, member: Any, owner: Any, outsider: Any) -> None:
    url = f"/monitoring/drift/settings/{deployment.pk}/"
    page = browser(viewer).get(url)
    assert page.status_code == 200 and b'data-testid="drift-settings-columns"' in page.content
    assert b'data-testid="drift-settings-save"' not in page.content
    form = {"test:x": "wasserstein", "threshold:x": "0.2", "drift_share": "0.75", "prediction_drift": "on"}
    assert browser(viewer).post(url, form).status_code == 403
    assert browser(outsider).get(url).status_code == 404
    assert browser(outsider).post(url, form).status_code == 404
    for user in (member, owner):
        assert browser(user).post(url, form).status_code == 302
    saved = DriftSettings.objects.get()
    assert saved.columns == {"x": {"test": "wasserstein", "threshold": 0.2}} and saved.drift_share == 0.75
    refused = browser(member).post(url, {**form, "threshold:x": "abc"})
    assert refused.status_code == 400 and b"columns.x.threshold" in refused.content
    refused = browser(member).post(url, {**form, "test:colour": "ks"})
    assert refused.status_code == 400 and b"columns.colour.test" in refused.content
    unchecked = browser(member).post(url, {"drift_share": "0.5"})
    assert unchecked.status_code == 302
    assert DriftSettings.objects.get().prediction_drift is False and DriftSettings.objects.get().columns == {}


def test_a_viewer_is_refused_before_the_values_or_the_deployment_are_checked(
    deployment: Any, viewer: Any, member: Any
) -> None:
    """The role check comes first: a viewer's bad value, or a deployment serving nothing, is a 403 (not the
    400 or 409 an editor gets), and nothing is stored."""
    page = f"/monitoring/drift/settings/{deployment.pk}/"
    assert browser(viewer).post(page, {"threshold:x": "abc"}).status_code == 403
    assert browser(member).post(page, {"threshold:x": "abc"}).status_code == 400
    deployment.targets.all().delete()  # no live version (no service makes one; it only happens mid-change)
    url = f"/api/v1/drift-settings/{deployment.pk}/"
    change = {"drift_share": 0.9}
    assert client_for(viewer).put(url, change, format="json").status_code == 403
    assert client_for(member).put(url, change, format="json").status_code == 409
    assert not DriftSettings.objects.exists()
