"""The prediction log moves to the telemetry app: the table is renamed, no row is copied (issue 9).

The database work happens here, while the model is still in this app's state: the foreign key to the
deployment loses its database constraint and its index (telemetry names deployments by id; the
composite indexes that start with deployment_id serve its lookups; the (deployment, created_at) one goes
too: windows are read from rollups now, and every index slows ingest), the rows get their project id
(telemetry's retention is per project), indexes and the unique constraint get telemetry's names, and
the table becomes `telemetry_predictionlog`. Then the model leaves this app's state;
telemetry.0001_initial adds it to telemetry's state without touching the database.

On Postgres each step is an ALTER (the renamed unique constraint builds its index once); SQLite cannot
drop a foreign key in place, so Django rebuilds the table there (zero-setup mode only).
"""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models

BACKFILL_PROJECT = (
    "UPDATE deployments_predictionlog SET project_id = "
    "(SELECT d.project_id FROM deployments_deployment d WHERE d.id = deployments_predictionlog.deployment_id)"
)


def rename_brin(apps: object, schema_editor: object) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER INDEX IF EXISTS deployments_log_created_brin RENAME TO telemetry_log_created_brin")


def unrename_brin(apps: object, schema_editor: object) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER INDEX IF EXISTS telemetry_log_created_brin RENAME TO deployments_log_created_brin")


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0003_event_kind_started"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.AlterField(
                    model_name="predictionlog",
                    name="deployment",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="deployments.deployment",
                    ),
                ),
                migrations.AddField(
                    model_name="predictionlog",
                    name="project_id",
                    field=models.BigIntegerField(null=True),
                ),
                migrations.RunSQL(BACKFILL_PROJECT, migrations.RunSQL.noop),
                migrations.AlterField(
                    model_name="predictionlog",
                    name="project_id",
                    field=models.BigIntegerField(),
                ),
                migrations.RemoveIndex(model_name="predictionlog", name="deployments_log_window_idx"),
                migrations.RenameIndex(
                    model_name="predictionlog",
                    new_name="telemetry_log_version_idx",
                    old_name="deployments_log_version_idx",
                ),
                migrations.RemoveConstraint(model_name="predictionlog", name="deployments_log_request_unique"),
                migrations.AddConstraint(
                    model_name="predictionlog",
                    constraint=models.UniqueConstraint(
                        fields=("deployment", "request_id", "shadow"), name="telemetry_log_request_unique"
                    ),
                ),
                migrations.AddIndex(
                    model_name="predictionlog",
                    index=models.Index(fields=["project_id", "created_at"], name="telemetry_log_project_idx"),
                ),
                migrations.AlterModelTable(name="predictionlog", table="telemetry_predictionlog"),
                migrations.RunPython(rename_brin, unrename_brin),
            ],
            state_operations=[migrations.DeleteModel(name="PredictionLog")],
        ),
    ]
