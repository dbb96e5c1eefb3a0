"""Windowed performance per model version from labels joined to logged predictions, and the CBPE estimate."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from django.utils import timezone
from sklearn import metrics

from apps.telemetry import selectors
from apps.telemetry.models import PredictionLabel, PredictionLog, PredictionRollup
from apps.telemetry.selectors import performance_by_version
from apps.telemetry.services import labelled_predictions_record, prediction_labels_store
from tests.conftest import client_for

pytestmark = pytest.mark.django_db
DEPLOYMENT = 51
CLASSES = ["a", "b", "c"]


def logs(project: Any, rows: list[dict], *, ago: timedelta = timedelta(minutes=30)) -> None:
    """Logged predictions (and the rollup minute the API finds the project by)."""
    created = timezone.now() - ago
    PredictionLog.objects.bulk_create(
        PredictionLog(
            deployment_id=DEPLOYMENT,
            project_id=project.pk,
            status=200,
            created_at=created,
            **{"model_version_id": 7, **row},
        )
        for row in rows
    )
    counts: dict[tuple[int, bool], list[int]] = {}
    for row in rows:
        total = counts.setdefault((row.get("model_version_id", 7), row.get("shadow", False)), [0, 0])
        total[0] += 1
        total[1] += row.get("status", 200) >= 500
    for (version_id, shadow), (requests, errors) in counts.items():
        rollup, _ = PredictionRollup.objects.get_or_create(
            deployment_id=DEPLOYMENT,
            project_id=project.pk,
            model_version_id=version_id,
            shadow=shadow,
            minute=created.replace(second=0, microsecond=0),
        )
        rollup.requests += requests
        rollup.errors += errors
        rollup.save()


def labels(project: Any, truths: dict[str, list], kind: str = "label") -> None:
    PredictionLabel.objects.bulk_create(
        PredictionLabel(
            deployment_id=DEPLOYMENT,
            project_id=project.pk,
            request_id=request_id,
            kind=kind,
            truth=truth,
            source="api",
            received_at=timezone.now(),
        )
        for request_id, truth in truths.items()
    )
    labelled_predictions_record({(DEPLOYMENT, request_id) for request_id in truths})


def classifier_rows(rng: np.random.Generator, n: int, prefix: str = "r") -> tuple[list[dict], np.ndarray]:
    """n one-row requests of a calibrated 3-class model: the true class is drawn from the probabilities."""
    proba = rng.dirichlet([0.6, 0.6, 0.6], size=n)
    truth = np.array([rng.choice(3, p=p) for p in proba])
    rows = [
        {"request_id": f"{prefix}{i}", "outputs": [CLASSES[int(np.argmax(p))]], "probabilities": [p.tolist()]}
        for i, p in enumerate(proba)
    ]
    return rows, np.array(CLASSES)[truth]


def window() -> dict[str, datetime]:
    now = timezone.now()
    return {"since": now - timedelta(hours=24), "until": now}


def test_classification_metrics_equal_scikit_learn_on_the_joined_rows(project: Any) -> None:
    rng = np.random.default_rng(1)
    rows, truth = classifier_rows(rng, 300)
    rows.append(  # one request of two rows
        {"request_id": "multi", "outputs": ["a", "c"], "probabilities": [[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]]}
    )
    rows.append({"request_id": "shadowed", "shadow": True, "model_version_id": 8, **rows[0] | {"request_id": "r0"}})
    logs(project, rows)
    labelled = {f"r{i}": [str(truth[i])] for i in range(0, 300, 2)} | {"multi": ["a", "b"]}
    labels(project, labelled)

    (live, shadow) = performance_by_version(deployment_id=DEPLOYMENT, **window())
    assert (live.model_version_id, live.shadow, live.task, live.classes) == (7, False, "classification", CLASSES)
    assert (live.predictions, live.labelled, live.truncated) == (301, 151, False)
    y_true = [label for request_id in [f"r{i}" for i in range(0, 300, 2)] + ["multi"] for label in labelled[request_id]]
    by_id = {row["request_id"]: row for row in rows if not row.get("shadow")}
    ids = [f"r{i}" for i in range(0, 300, 2)] + ["multi"]
    y_pred = [output for request_id in ids for output in by_id[request_id]["outputs"]]
    proba = np.array([p for request_id in ids for p in by_id[request_id]["probabilities"]])
    realised = live.realised
    assert realised.n_labelled == len(y_true) == 152
    assert realised.accuracy == pytest.approx(metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    for name, scorer in [
        ("precision_macro", metrics.precision_score),
        ("recall_macro", metrics.recall_score),
        ("f1_macro", metrics.f1_score),
    ]:
        expected = scorer(y_true, y_pred, average="macro", zero_division=0)
        assert getattr(realised, name) == pytest.approx(expected, abs=1e-12)
    expected_auc = metrics.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=CLASSES)
    assert realised.roc_auc == pytest.approx(expected_auc, abs=1e-12)
    assert (shadow.model_version_id, shadow.shadow, shadow.predictions, shadow.labelled) == (8, True, 1, 1)
    assert shadow.realised.n_labelled == 1, "a shadow answer is scored against the label of its request"


def test_regression_metrics_equal_scikit_learn(project: Any) -> None:
    rng = np.random.default_rng(2)
    predicted, actual = rng.normal(size=80), rng.normal(size=80)
    logs(
        project,
        [{"request_id": f"q{i}", "outputs": [float(v)], "probabilities": None} for i, v in enumerate(predicted)],
    )
    labels(project, {f"q{i}": [float(v)] for i, v in enumerate(actual[:60])}, kind="value")
    (result,) = performance_by_version(deployment_id=DEPLOYMENT, **window())
    assert (result.task, result.predictions, result.labelled, result.realised.n_labelled) == ("regression", 80, 60, 60)
    assert result.realised.mae == pytest.approx(metrics.mean_absolute_error(actual[:60], predicted[:60]), abs=1e-12)
    assert result.realised.rmse == pytest.approx(
        metrics.root_mean_squared_error(actual[:60], predicted[:60]), abs=1e-12
    )
    assert result.realised.r2 == pytest.approx(metrics.r2_score(actual[:60], predicted[:60]), abs=1e-12)
    assert result.estimate is None and "classifiers" in result.estimate_reason


def test_the_label_free_estimate_is_near_the_realised_accuracy_of_the_unlabelled_rows(project: Any) -> None:
    rng = np.random.default_rng(3)
    rows, truth = classifier_rows(rng, 6000)
    logs(project, rows)
    labels(project, {f"r{i}": [str(truth[i])] for i in range(2000)})
    (result,) = performance_by_version(deployment_id=DEPLOYMENT, **window(), limit=4000)
    hidden = np.array([row["outputs"][0] for row in rows[2000:]]) == truth[2000:]
    assert result.estimate is not None and result.estimate.n_rows == 4000, result.estimate_reason
    assert result.estimate.accuracy == pytest.approx(hidden.mean(), abs=0.02)
    assert result.estimate.f1_macro is not None

    older, older_truth = classifier_rows(rng, 600, prefix="old")
    logs(project, older, ago=timedelta(days=3))
    labels(project, {f"old{i}": [str(older_truth[i])] for i in range(600)})
    now = timezone.now()
    (fitted_elsewhere,) = performance_by_version(
        deployment_id=DEPLOYMENT,
        **window(),
        limit=4000,
        reference_since=now - timedelta(days=4),
        reference_until=now - timedelta(days=2),
    )
    assert fitted_elsewhere.estimate.accuracy == pytest.approx(hidden.mean(), abs=0.03)


def test_a_late_label_counts_the_next_time(project: Any, member: Any) -> None:
    rows, truth = classifier_rows(np.random.default_rng(4), 3)
    logs(project, rows, ago=timedelta(hours=20))
    (before,) = performance_by_version(deployment_id=DEPLOYMENT, **window())
    assert (before.labelled, before.realised, before.reason) == (0, None, "no labelled predictions in the window")
    assert before.estimate is None and before.estimate_reason
    prediction_labels_store(actor=member, project=project, items=[{"request_id": "r1", "label": str(truth[1])}])
    (after,) = performance_by_version(deployment_id=DEPLOYMENT, **window())
    assert (after.labelled, after.realised.n_labelled) == (1, 1)


def test_the_raw_read_is_bounded_and_says_so(project: Any) -> None:
    rows, truth = classifier_rows(np.random.default_rng(5), 30)
    logs(project, rows)
    labels(project, {f"r{i}": [str(truth[i])] for i in range(30)})
    (result,) = performance_by_version(deployment_id=DEPLOYMENT, **window(), limit=10)
    assert (result.labelled, result.truncated, result.realised.n_labelled) == (30, True, 10)


def test_an_unknown_class_order_gives_no_auc_and_says_why(project: Any) -> None:
    logs(project, [{"request_id": "x", "outputs": ["a"], "probabilities": [[0.9, 0.05, 0.05]]}])
    labels(project, {"x": ["a"]})
    (result,) = performance_by_version(deployment_id=DEPLOYMENT, **window())
    assert result.realised.accuracy == 1.0 and result.classes is None
    assert result.realised.roc_auc is None and "probability columns" in result.realised.roc_auc_reason


def test_rows_whose_shapes_do_not_line_up_are_left_out(project: Any) -> None:
    logs(
        project,
        [
            {"request_id": "scalar", "outputs": "a", "probabilities": None},
            {"request_id": "short", "outputs": ["a", "b"], "probabilities": [[1.0, 0.0], [0.0, 1.0]]},
            {"request_id": "ragged", "outputs": ["a", "b"], "probabilities": [[1.0, 0.0], [1.0]]},
            {"request_id": "fine", "outputs": ["b"], "probabilities": [[0.0, 1.0]]},
        ],
    )
    labels(project, {"scalar": ["a"], "short": ["a"], "ragged": ["a", "b"], "fine": ["b"]})
    (result,) = performance_by_version(deployment_id=DEPLOYMENT, **window())
    assert (result.labelled, result.realised.n_labelled, result.realised.accuracy) == (4, 3, 1.0)
    assert result.realised.roc_auc is None, "ragged probabilities: no AUC rather than an error"


URL = f"/api/v1/deployments/{DEPLOYMENT}/performance/"


@pytest.mark.parametrize(("role", "status"), [("viewer", 200), ("member", 200), ("owner", 200), ("outsider", 404)])
def test_api_roles_and_no_nan_for_a_window_without_labels(
    project: Any, role: str, status: int, request: pytest.FixtureRequest
) -> None:
    rows, _ = classifier_rows(np.random.default_rng(6), 5)
    logs(project, rows)
    answer = client_for(request.getfixturevalue(role)).get(URL + "?window=1h")
    assert answer.status_code == status
    if status == 200:
        body = json.loads(answer.content, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))
        (version,) = body["versions"]
        assert (version["predictions"], version["labelled"], version["realised"]) == (5, 0, None)
        assert version["reason"] == "no labelled predictions in the window"
        assert version["estimate"] is None and version["estimate_reason"]
        assert body["row_limit"] == selectors.PERFORMANCE_ROW_LIMIT


def test_api_answers_an_empty_window_and_validates_parameters(project: Any, viewer: Any) -> None:
    rows, truth = classifier_rows(np.random.default_rng(7), 5)
    logs(project, rows, ago=timedelta(days=2))
    labels(project, {"r0": [str(truth[0])]})
    api = client_for(viewer)
    empty = api.get(URL + "?window=1h")
    assert empty.status_code == 200 and empty.json()["versions"] == []
    week = api.get(URL + "?window=7d").json()["versions"][0]
    assert (week["labelled"], week["realised"]["n_labelled"]) == (1, 1)
    for bad in ["abc", "0h", "91d", "5m"]:
        answer = api.get(URL + f"?window={bad}")
        assert answer.status_code == 400 and "window" in answer.json()
    assert "reference_until" in api.get(URL + "?reference_since=2026-11-01T00:00:00Z").json()
    assert "reference_since" in api.get(URL + "?reference_since=yesterday&reference_until=2026-11-01T00:00Z").json()
    backwards = api.get(URL + "?reference_since=2026-11-02T00:00:00Z&reference_until=2026-11-01T00:00:00Z")
    assert "reference_until" in backwards.json()
    assert api.get("/api/v1/deployments/999/performance/").status_code == 404
    assert datetime.fromisoformat(empty.json()["until"].replace("Z", "+00:00")).tzinfo is not None


def test_api_serialises_the_estimate_and_its_confusion_matrix(project: Any, viewer: Any) -> None:
    rows, truth = classifier_rows(np.random.default_rng(8), 300)
    logs(project, rows)
    labels(project, {f"r{i}": [str(truth[i])] for i in range(200)})
    body = json.loads(client_for(viewer).get(URL).content)
    (version,) = body["versions"]
    assert (version["predictions"], version["labelled"], version["classes"]) == (300, 200, CLASSES)
    assert version["realised"]["n_labelled"] == 200 and 0 <= version["realised"]["roc_auc"] <= 1
    estimate = version["estimate"]
    assert estimate["n_rows"] == 100 and 0 <= estimate["accuracy"] <= 1
    assert np.array(estimate["expected_confusion"]).shape == (3, 3)


def test_a_sampled_window_scores_a_uniform_sample_and_its_metrics_equal_scikit_learn_on_it(project: Any) -> None:
    rows, truth = classifier_rows(np.random.default_rng(8), 400)
    logs(project, rows)
    labels(project, {f"r{i}": [str(truth[i])] for i in range(400)})
    (result,) = performance_by_version(deployment_id=DEPLOYMENT, **window(), limit=50)
    assert (result.predictions, result.labelled, result.labelled_sample, result.truncated) == (400, 400, 50, True)
    # The sample is the first 50 labelled rows in the order of the id hash (selectors.SAMPLE_HASH).
    ids = dict(PredictionLog.objects.filter(deployment_id=DEPLOYMENT).values_list("request_id", "id"))
    picked = sorted(range(400), key=lambda i: (ids[f"r{i}"] * 2654435761) % 4294967296)[:50]
    y_true = [str(truth[i]) for i in picked]
    y_pred = [rows[i]["outputs"][0] for i in picked]
    assert result.realised.n_labelled == 50
    assert result.realised.accuracy == pytest.approx(metrics.accuracy_score(y_true, y_pred), abs=1e-12)
    expected_f1 = metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert result.realised.f1_macro == pytest.approx(expected_f1, abs=1e-12)
    assert len({i // 100 for i in picked}) == 4, "the sample spreads over the rows, not the first or last ones"
