"""Telemetry's tables. The prediction log already exists: deployments.0004 renamed the deployments app's table to
`telemetry_predictionlog` and reshaped it, so here it only enters telemetry's state (no row is copied). The
dependency on that deployments migration records history; telemetry's code imports no other app.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("deployments", "0004_predictionlog_to_telemetry"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="PredictionLog",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("deployment_id", models.BigIntegerField()),
                        ("project_id", models.BigIntegerField()),
                        ("model_version_id", models.BigIntegerField(blank=True, null=True)),
                        ("request_id", models.CharField(max_length=64)),
                        ("shadow", models.BooleanField(default=False)),
                        ("inputs", models.JSONField(blank=True, null=True)),
                        ("outputs", models.JSONField(blank=True, null=True)),
                        ("probabilities", models.JSONField(blank=True, null=True)),
                        ("latency_ms", models.FloatField(blank=True, null=True)),
                        ("status", models.PositiveSmallIntegerField()),
                        ("error", models.TextField(blank=True)),
                        ("request_key", models.CharField(blank=True, max_length=200)),
                        (
                            "created_at",
                            models.DateTimeField(help_text="When the server answered (the event's timestamp)."),
                        ),
                        ("received_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        "ordering": ["-created_at"],
                        "indexes": [
                            models.Index(
                                fields=["deployment_id", "model_version_id", "created_at"],
                                name="telemetry_log_version_idx",
                            ),
                            models.Index(fields=["project_id", "created_at"], name="telemetry_log_project_idx"),
                        ],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("deployment_id", "request_id", "shadow"), name="telemetry_log_request_unique"
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.CreateModel(
            name="PredictionRollup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("deployment_id", models.BigIntegerField()),
                ("project_id", models.BigIntegerField()),
                ("model_version_id", models.BigIntegerField(help_text="0 for predictions no version answered.")),
                ("shadow", models.BooleanField(default=False)),
                ("minute", models.DateTimeField()),
                ("requests", models.PositiveIntegerField(default=0)),
                ("errors", models.PositiveIntegerField(default=0, help_text="Answers with a 5xx status.")),
                ("latency_count", models.PositiveIntegerField(default=0)),
                ("latency_sum_ms", models.FloatField(default=0.0)),
                ("bucket_00", models.PositiveIntegerField(default=0)),
                ("bucket_01", models.PositiveIntegerField(default=0)),
                ("bucket_02", models.PositiveIntegerField(default=0)),
                ("bucket_03", models.PositiveIntegerField(default=0)),
                ("bucket_04", models.PositiveIntegerField(default=0)),
                ("bucket_05", models.PositiveIntegerField(default=0)),
                ("bucket_06", models.PositiveIntegerField(default=0)),
                ("bucket_07", models.PositiveIntegerField(default=0)),
                ("bucket_08", models.PositiveIntegerField(default=0)),
                ("bucket_09", models.PositiveIntegerField(default=0)),
                ("bucket_10", models.PositiveIntegerField(default=0)),
                ("bucket_11", models.PositiveIntegerField(default=0)),
                ("bucket_12", models.PositiveIntegerField(default=0)),
                ("bucket_13", models.PositiveIntegerField(default=0)),
            ],
            options={
                "ordering": ["-minute"],
                "indexes": [
                    models.Index(fields=["deployment_id", "minute"], name="telemetry_rollup_window_idx"),
                    models.Index(fields=["project_id", "minute"], name="telemetry_rollup_project_idx"),
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("deployment_id", "model_version_id", "shadow", "minute"), name="telemetry_rollup_key"
                    )
                ],
            },
        ),
    ]
