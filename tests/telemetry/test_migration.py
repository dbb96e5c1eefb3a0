"""The prediction log's move from deployments to telemetry keeps every row (a state-only move of the table)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from apps.telemetry.models import LabelledPrediction, PredictionLog

BEFORE = [("deployments", "0003_event_kind_started"), ("telemetry", None)]


@pytest.fixture
def executor() -> Iterator[MigrationExecutor]:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    yield executor
    # Whatever the test did, leave the database at the latest migrations for the next tests.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_migrating_forwards_keeps_the_rows_and_gives_them_their_project(executor: MigrationExecutor) -> None:
    # Core and the registry stay at their latest migrations (only deployments and telemetry were moved back).
    latest = [key for key in executor.loader.graph.leaf_nodes() if key[0] in ("core", "registry")]
    old = executor.loader.project_state([*latest, BEFORE[0]]).apps
    project = old.get_model("core", "Project").objects.create(name="P", name_key="p", slug="p")
    model = old.get_model("registry", "RegisteredModel").objects.create(project=project, name="iris", name_key="iris")
    deployment = old.get_model("deployments", "Deployment").objects.create(
        project=project, name="iris", registered_model=model, ingest_token_salt="s", ingest_token_hash="h"
    )
    created = datetime(2026, 11, 28, 9, 14, tzinfo=UTC)
    old_log = old.get_model("deployments", "PredictionLog")
    old_log.objects.bulk_create(
        old_log(
            deployment=deployment,
            model_version_id=7,
            request_id=f"r{i}",
            inputs=[{"x": i}],
            status=200,
            latency_ms=1.0 + i,
            created_at=created,
        )
        for i in range(3)
    )
    ids = sorted(old_log.objects.values_list("pk", flat=True))

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    rows = list(PredictionLog.objects.order_by("pk"))
    assert [row.pk for row in rows] == ids, "the same rows, not copies"
    assert {(row.deployment_id, row.project_id, row.model_version_id) for row in rows} == {
        (deployment.pk, project.pk, 7)
    }
    assert [row.inputs for row in rows] == [[{"x": 0}], [{"x": 1}], [{"x": 2}]]
    assert rows[0].created_at == created and rows[2].latency_ms == 3.0
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, PredictionLog._meta.db_table)
    assert not [name for name, info in constraints.items() if info["foreign_key"]], "no foreign key is left"
    assert "telemetry_log_event_unique" in constraints
    # New rows go in beside the old ones, the sequence carried over.
    PredictionLog.objects.create(
        deployment_id=deployment.pk, project_id=project.pk, request_id="new", status=200, created_at=created
    )
    assert PredictionLog.objects.count() == 4


@pytest.mark.django_db(transaction=True)
def test_the_labels_stored_before_the_record_of_labelled_predictions_are_recorded() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("telemetry", "0004_server_shipping_report")])
    old = executor.loader.project_state([("telemetry", "0004_server_shipping_report")]).apps
    log, label = old.get_model("telemetry", "PredictionLog"), old.get_model("telemetry", "PredictionLabel")
    created = datetime(2026, 11, 28, 9, 14, tzinfo=UTC)
    common = {"deployment_id": 3, "project_id": 2, "created_at": created}
    live = log.objects.create(request_id="r1", model_version_id=7, status=200, outputs=["a"], **common)
    shadow = log.objects.create(request_id="r1", model_version_id=8, shadow=True, status=200, outputs=["b"], **common)
    log.objects.create(request_id="r1", model_version_id=9, shadow=True, event_id="e", status=500, **common)
    log.objects.create(request_id="unlabelled", model_version_id=7, status=200, outputs=["a"], **common)
    label.objects.create(
        deployment_id=3, project_id=2, request_id="r1", kind="label", truth=["a"], source="api", received_at=created
    )
    try:
        executor = MigrationExecutor(connection)
        executor.migrate([("telemetry", "0005_labelled_prediction")])
        recorded = set(
            LabelledPrediction.objects.values_list("log_id", "model_version_id", "shadow", "predicted_at", "sample_key")
        )
        assert recorded == {
            (row.pk, version, is_shadow, created, (row.pk * 2654435761) % 2**32)
            for row, version, is_shadow in ((live, 7, False), (shadow, 8, True))
        }, "every answered row of a labelled request, the failed one and the unlabelled one left out"
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
