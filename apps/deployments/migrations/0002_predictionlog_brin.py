"""A BRIN index on the prediction log's created_at (Postgres only): tiny, and rows arrive in time order."""

from __future__ import annotations

from django.db import migrations


def create_brin(apps: object, schema_editor: object) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS deployments_log_created_brin "
            "ON deployments_predictionlog USING brin (created_at)"
        )


def drop_brin(apps: object, schema_editor: object) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS deployments_log_created_brin")


class Migration(migrations.Migration):
    dependencies = [("deployments", "0001_initial")]

    operations = [migrations.RunPython(create_brin, drop_brin)]
