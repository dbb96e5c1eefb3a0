"""The feedback API and service: ground truth joined to logged predictions by request id."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, transaction
from django.utils import timezone

from apps.core.models import APIToken, AuditEntry
from apps.deployments import services as deployment_services
from apps.telemetry import services
from apps.telemetry.models import LabelledPrediction, PredictionLabel, PredictionLog
from apps.telemetry.services import IngestSource, prediction_labels_store, predictions_ingest
from tests.conftest import client_for
from tests.factories import ModelVersionFactory, ProjectFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db
DEPLOYMENT = 41


@pytest.fixture
def other_project(db: None) -> Any:
    return ProjectFactory()


def log(project: Any, request_id: str, *, deployment_id: int = DEPLOYMENT, **changes: Any) -> PredictionLog:
    """A prediction as a model server ships it: through ingest (raw row and rollup)."""
    event = {
        "request_id": request_id,
        "deployment_id": deployment_id,
        "version_id": 7,
        "shadow": False,
        "inputs": {"x": [1]},
        "outputs": ["yes"],
        "probabilities": [[0.2, 0.8]],
        "status": 200,
        "timestamp": (timezone.now() - timedelta(days=2)).isoformat(),
        **changes,
    }
    predictions_ingest(
        source=IngestSource(deployment_id=deployment_id, project_id=project.pk, version_ids=frozenset({7, 8, 9})),
        events=[event],
    )
    return PredictionLog.objects.get(deployment_id=deployment_id, request_id=request_id, shadow=event["shadow"])


def url(project: Any, **params: Any) -> str:
    query = "&".join(f"{key}={value}" for key, value in {"project": project.slug, **params}.items())
    return f"/api/v1/feedback/?{query}"


def test_labels_are_stored_once_per_request_and_a_change_is_audited(project: Any, member: Any) -> None:
    log(project, "r1")
    log(project, "r2", outputs=["no", "yes"], probabilities=[[0.9, 0.1], [0.3, 0.7]])
    log(project, "r1", shadow=True, version_id=8)
    api = client_for(member)
    first = api.post(url(project), [{"request_id": "r1", "label": "yes"}, {"request_id": "r2", "label": ["no", "no"]}])
    assert first.status_code == 200, first.content
    assert first.json() == {"stored": 2, "replaced": 0, "unknown": 0, "unknown_ids": [], "errors": []}
    label = PredictionLabel.objects.get(request_id="r1")
    assert (label.deployment_id, label.project_id, label.model_version_id) == (DEPLOYMENT, project.pk, 7)
    assert (label.kind, label.truth, label.source) == ("label", ["yes"], "api")

    same = api.post(url(project), [{"request_id": "r1", "label": "yes"}], format="json")
    assert same.json()["replaced"] == 0, "sending the same label again changes nothing"
    assert not AuditEntry.objects.filter(action="prediction_label.replace").exists()

    changed = api.post(url(project), [{"request_id": "r1", "label": "no"}], format="json")
    assert changed.json() == {"stored": 1, "replaced": 1, "unknown": 0, "unknown_ids": [], "errors": []}
    assert PredictionLabel.objects.count() == 2 and PredictionLabel.objects.get(request_id="r1").truth == ["no"]
    entry = AuditEntry.objects.get(action="prediction_label.replace")
    assert (entry.project, entry.actor, entry.object_type) == (project, member, "telemetry.predictionlabel")
    assert entry.object_id == str(PredictionLabel.objects.get(request_id="r1").pk)
    assert entry.before == {"kind": "label", "truth": ["yes"], "source": "api"}
    assert entry.after == {"kind": "label", "truth": ["no"], "source": "api"}


def test_a_label_arriving_days_late_joins_its_prediction(project: Any, member: Any) -> None:
    old = log(project, "old", timestamp=(timezone.now() - timedelta(days=12)).isoformat())
    result = prediction_labels_store(actor=member, project=project, items=[{"request_id": "old", "label": "yes"}])
    assert result.stored == 1
    label = PredictionLabel.objects.get()
    assert (label.received_at - old.created_at).days == 12


def test_each_answered_row_of_a_labelled_request_is_recorded_once(project: Any, member: Any) -> None:
    live = log(project, "r1")
    log(project, "failed", status=500, outputs=None, probabilities=None)

    def store() -> set[tuple]:
        prediction_labels_store(actor=member, project=project, items=[{"request_id": "r1", "label": "yes"}])
        return set(
            LabelledPrediction.objects.values_list(
                "log_id", "deployment_id", "project_id", "model_version_id", "shadow", "predicted_at", "sample_key"
            )
        )

    def knuth(row: PredictionLog) -> int:  # the sampling order: Knuth's multiplicative hash of the row id
        return (row.pk * 2654435761) % 2**32

    recorded = (live.pk, DEPLOYMENT, project.pk, 7, False, live.created_at, knuth(live))
    assert store() == {recorded}
    shadow = log(project, "r1", shadow=True, version_id=8)
    assert store() == {recorded, (shadow.pk, DEPLOYMENT, project.pk, 8, True, shadow.created_at, knuth(shadow))}
    assert LabelledPrediction.objects.count() == 2, "a label sent again records nothing twice"


def test_unknown_ids_are_counted_and_the_first_hundred_listed(project: Any, member: Any, other_project: Any) -> None:
    log(project, "known")
    log(other_project, "elsewhere")
    items = [{"request_id": "known", "label": "yes"}, {"request_id": "elsewhere", "label": "yes"}]
    items += [{"request_id": f"u{i}", "label": "yes"} for i in range(150)]
    answer = client_for(member).post(url(project), items, format="json")
    assert answer.status_code == 200
    body = answer.json()
    assert (body["stored"], body["unknown"], len(body["unknown_ids"])) == (1, 151, 100)
    assert body["unknown_ids"][:2] == ["elsewhere", "u0"], "another project's prediction is unknown here"
    assert PredictionLabel.objects.count() == 1


def test_malformed_items_are_refused_one_by_one_and_the_rest_stored(project: Any, member: Any) -> None:
    log(project, "ok")
    log(project, "two-rows", outputs=["a", "b"], probabilities=[[1, 0], [0, 1]])
    log(project, "failed", outputs=None, probabilities=None, status=500)
    log(project, "regression", outputs=[1.5], probabilities=None)
    items = [
        "not an object",
        {"label": "yes"},
        {"request_id": "ok"},
        {"request_id": "ok", "label": "yes", "value": 1.0},
        {"request_id": "ok", "label": {"a": 1}},
        {"request_id": "regression", "value": "high"},
        {"request_id": "regression", "value": float("nan")},
        {"request_id": "two-rows", "label": "a"},
        {"request_id": "failed", "label": "a"},
        {"request_id": "ok", "value": 1.0},
        {"request_id": "regression", "label": "x"},
        {"request_id": "ok", "label": 1},
        {"request_id": "ok", "label": "yes"},
        {"request_id": "regression", "value": 2},
    ]
    result = prediction_labels_store(actor=member, project=project, items=items)
    assert [(error["index"], error["field"]) for error in result.errors] == [
        (0, "request_id"),
        (1, "request_id"),
        (2, "label"),
        (3, "label"),
        (4, "label"),
        (5, "value"),
        (6, "value"),
        (7, "label"),
        (8, "request_id"),
        (9, "value"),
        (10, "label"),
        (11, "label"),
    ]
    assert result.errors[11]["message"] == "the model's classes are text; 1 is a number"
    assert "2 rows" in result.errors[7]["message"] and "status 500" in result.errors[8]["message"]
    assert result.stored == 2
    assert dict(PredictionLabel.objects.values_list("request_id", "truth")) == {"ok": ["yes"], "regression": [2]}


def test_a_malformed_body_is_a_400_naming_the_field(project: Any, member: Any) -> None:
    api = client_for(member)
    assert api.post(url(project), {"request_id": "r"}, format="json").json() == {
        "body": ["must be a JSON list of {request_id, label} or {request_id, value} objects"]
    }
    not_json = api.post(url(project), "[{", content_type="application/json")
    assert not_json.status_code == 400
    assert "project" in api.post("/api/v1/feedback/", [], format="json").json()
    assert "deployment_id" in api.post(url(project, deployment_id="x"), [], format="json").json()
    assert api.post("/api/v1/feedback/?project=nope", [], format="json").status_code == 404
    too_many = [{"request_id": "r", "label": "a"}] * (services.MAX_LABELS_PER_REQUEST + 1)
    assert "body" in api.post(url(project), too_many, format="json").json()


def test_an_id_in_two_deployments_needs_deployment_id(project: Any, member: Any) -> None:
    log(project, "dup", deployment_id=1)
    log(project, "dup", deployment_id=2, version_id=9)
    api = client_for(member)
    ambiguous = api.post(url(project), [{"request_id": "dup", "label": "yes"}], format="json").json()
    assert ambiguous["errors"][0]["field"] == "request_id" and ambiguous["stored"] == 0
    scoped = api.post(url(project, deployment_id=2), [{"request_id": "dup", "label": "yes"}], format="json").json()
    assert scoped["stored"] == 1
    assert PredictionLabel.objects.get().model_version_id == 9


def csv_file(text: str, name: str = "labels.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode(), content_type="text/csv")


def test_csv_upload_stores_labels_as_the_model_outputs_type(project: Any, member: Any) -> None:
    log(project, "c1", outputs=[1], probabilities=[[0.1, 0.9]])
    log(project, "c2", outputs=["yes"])
    log(project, "r1", outputs=[0.5], probabilities=None)
    api = client_for(member)
    answer = api.post(
        url(project), {"file": csv_file("request_id,label\nc1,0\nc2,no\nmissing,1\n,1\n")}, format="multipart"
    )
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert (body["stored"], body["unknown"], body["unknown_ids"]) == (2, 1, ["missing"])
    assert body["errors"] == [{"index": 3, "field": "request_id", "message": body["errors"][0]["message"]}]
    assert dict(PredictionLabel.objects.values_list("request_id", "truth")) == {"c1": [0], "c2": ["no"]}
    assert PredictionLabel.objects.get(request_id="c1").source == "csv"
    values = api.post(url(project), {"file": csv_file("request_id,value\nr1,1.25\nc1,x\n")}, format="multipart").json()
    assert values["stored"] == 1 and values["errors"][0]["field"] == "value"
    assert PredictionLabel.objects.get(request_id="r1").truth == [1.25]


def test_csv_errors_name_the_column_or_the_file(project: Any, member: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    api = client_for(member)
    assert api.post(url(project), {"file": csv_file("id,label\nr,1\n")}, format="multipart").json() == {
        "request_id": ["the CSV has no request_id column"]
    }
    assert "label" in api.post(url(project), {"file": csv_file("request_id\nr\n")}, format="multipart").json()
    assert (
        "label"
        in api.post(url(project), {"file": csv_file("request_id,label,value\nr,1,2\n")}, format="multipart").json()
    )
    assert "file" in api.post(url(project), {"other": "x"}, format="multipart").json()
    assert (
        "file"
        in api.post(url(project), {"file": SimpleUploadedFile("x.csv", b"\xff\xfe\x00bad")}, format="multipart").json()
    )
    monkeypatch.setattr(services, "MAX_FEEDBACK_CSV_BYTES", 100)
    big = "request_id,label\n" + "r,1\n" * 30
    answer = api.post(url(project), {"file": csv_file(big)}, format="multipart")
    assert answer.status_code == 400 and "file" in answer.json()
    monkeypatch.setattr(services, "MAX_FEEDBACK_CSV_BYTES", 10_000)
    monkeypatch.setattr(services, "MAX_LABELS_PER_REQUEST", 2)
    rows = api.post(url(project), {"file": csv_file("request_id,label\na,1\nb,1\nc,1\n")}, format="multipart")
    assert rows.json() == {"file": ["at most 2 rows per upload"]}
    assert not PredictionLabel.objects.exists()


@pytest.mark.parametrize(
    ("role", "status"), [("viewer", 403), ("outsider", 404), ("member", 200), ("owner", 200), ("anonymous", 401)]
)
def test_roles(project: Any, role: str, status: int, request: pytest.FixtureRequest) -> None:
    log(project, "r1")
    body = [{"request_id": "r1", "label": "yes"}]
    api = client_for(request.getfixturevalue(role)) if role != "anonymous" else client_for(None)
    assert api.post(url(project), body, format="json").status_code == status
    csv_answer = api.post(url(project), {"file": csv_file("request_id,label\nr1,yes\n")}, format="multipart")
    assert csv_answer.status_code == status, "the role is checked before the file is read"
    assert PredictionLabel.objects.exists() == (status == 200)


def test_a_personal_api_token_authenticates(project: Any, member: Any, api: Any) -> None:
    log(project, "r1")
    APIToken.objects.create(user=member, name="labels", prefix="mlc_f", key_hash=APIToken.hash_key("mlc_feedback"))
    answer = api.post(
        url(project), [{"request_id": "r1", "label": "yes"}], format="json", HTTP_AUTHORIZATION="Bearer mlc_feedback"
    )
    assert answer.status_code == 200 and answer.json()["stored"] == 1


def test_a_deployment_ingest_token_cannot_send_labels(project: Any, owner: Any, api: Any) -> None:
    model = RegisteredModelFactory(project=project, name="iris")
    version = ModelVersionFactory(model=model, number=1)
    deployment = deployment_services.deployment_create(project=project, name="iris", actor=owner, model_version=version)
    log(project, "r1", deployment_id=deployment.pk)
    answer = api.post(
        url(project),
        [{"request_id": "r1", "label": "yes"}],
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {deployment.ingest_token()}",
    )
    assert answer.status_code == 401 and not PredictionLabel.objects.exists()


def test_a_batch_relabelling_many_requests_audits_each_change(project: Any, member: Any) -> None:
    for i in range(30):
        log(project, f"m{i}")
    first = [{"request_id": f"m{i}", "label": "yes"} for i in range(30)]
    assert prediction_labels_store(actor=member, project=project, items=first).stored == 30
    second = [{"request_id": f"m{i}", "label": "no" if i < 20 else "yes"} for i in range(30)]
    second += [{"request_id": "m0", "label": "maybe"}]  # the same id twice in one batch: the last one wins
    result = prediction_labels_store(actor=member, project=project, items=second)
    assert (result.stored, result.replaced) == (31, 21)
    assert PredictionLabel.objects.get(request_id="m0").truth == ["maybe"]
    assert PredictionLabel.objects.filter(truth=["no"]).count() == 19
    entries = AuditEntry.objects.filter(action="prediction_label.replace")
    assert entries.count() == 21
    assert sorted(entry.after["truth"][0] for entry in entries.filter(object_repr="label of m0")) == ["maybe", "no"]


@pytest.mark.django_db(transaction=True)
def test_two_requests_labelling_the_same_new_id_at_once_both_succeed(project: Any, member: Any) -> None:
    log(project, "race")
    outcome: dict[str, Any] = {}

    def second() -> None:
        try:
            items = [{"request_id": "race", "label": "no"}]
            outcome["second"] = prediction_labels_store(actor=member, project=project, items=items)
        finally:
            connection.close()

    with transaction.atomic():  # the first request's insert, not committed yet
        prediction_labels_store(actor=member, project=project, items=[{"request_id": "race", "label": "yes"}])
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive(), "the second insert waits for the first request's transaction"
    thread.join(timeout=10)
    assert outcome["second"].stored == 1, "an upsert, not a unique violation"
    assert PredictionLabel.objects.get(request_id="race").truth == ["no"]
