"""The prediction log's move from deployments to telemetry keeps every row (a state-only move of the table)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from apps.telemetry.models import PredictionLog

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
