"""Webhook deliveries move to the notification outbox of apps/core: every delivery and attempt is copied into
core.Delivery / core.DeliveryAttempt (source `registry.webhook:<id>`), so history stays visible and deliveries
still pending or retrying are sent by the outbox; then the registry's tables are dropped. Webhooks gain a
`kind` (webhook or Slack), and registry events a dispatch lease (`claimed_until`)."""

from django.conf import settings
from django.db import migrations, models

import apps.registry.models


def _link(event):
    if event.request_id:
        return f"{settings.CONSOLE_BASE_URL}/approvals/{event.request_id}/"
    if event.model_id:
        return f"{settings.CONSOLE_BASE_URL}/models/{event.model_id}/"
    return settings.CONSOLE_BASE_URL


def copy_deliveries_to_outbox(apps, schema_editor):
    WebhookDelivery = apps.get_model("registry", "WebhookDelivery")
    Delivery = apps.get_model("core", "Delivery")
    DeliveryAttempt = apps.get_model("core", "DeliveryAttempt")
    old_deliveries = WebhookDelivery.objects.select_related("webhook", "event__project", "event__actor")
    for old in old_deliveries.order_by("pk").iterator():
        hook, event = old.webhook, old.event
        attempts = list(old.attempt_log.order_by("number"))
        summary = str(event.payload.get("summary") or event.type)
        delivery = Delivery.objects.create(
            channel="webhook",
            target={"url": hook.url, "secret": hook.secret},
            recipient=hook.url[:500],
            source=f"registry.webhook:{hook.pk}",
            message={
                "subject": f"[{event.project.name}] {summary}",
                "text": summary,
                "fields": [],
                "link": _link(event),
                "kind": event.type,
                "data": {
                    "id": event.pk,
                    "created_at": event.created_at.isoformat(),
                    "project": event.project.slug,
                    "actor": event.actor.username if event.actor else None,
                    "data": event.payload,
                },
            },
            status=old.status,
            attempts=old.attempts,
            next_attempt_at=old.next_attempt_at or old.created_at,
            delivered_at=old.finished_at if old.status == "succeeded" else None,
            last_error=attempts[-1].error if attempts and old.status != "succeeded" else "",
        )
        # auto_now_add ignores a given value; the history keeps its own times.
        Delivery.objects.filter(pk=delivery.pk).update(created_at=old.created_at)
        for attempt in attempts:
            succeeded = attempt.status_code is not None and 200 <= attempt.status_code < 300
            copied = DeliveryAttempt.objects.create(
                delivery=delivery,
                number=attempt.number,
                outcome="succeeded" if succeeded else "refused" if attempt.error.startswith("refused") else "failed",
                url=attempt.url,
                status_code=attempt.status_code,
                error=attempt.error,
                duration_ms=attempt.duration_ms,
            )
            DeliveryAttempt.objects.filter(pk=copied.pk).update(created_at=attempt.created_at)


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_notification_outbox"),
        ("registry", "0002_lineage_runs"),
    ]

    operations = [
        migrations.RunPython(copy_deliveries_to_outbox, migrations.RunPython.noop),
        migrations.AddField(
            model_name="registryevent",
            name="claimed_until",
            field=models.DateTimeField(
                blank=True, help_text="A worker runs the handlers until then; after that the sweep may.", null=True
            ),
        ),
        migrations.AddField(
            model_name="webhook",
            name="kind",
            field=models.CharField(
                choices=[("webhook", "Webhook (signed JSON)"), ("slack", "Slack (incoming webhook)")],
                default="webhook",
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="registryevent",
            name="dispatched_at",
            field=models.DateTimeField(blank=True, help_text="When the handlers had all run.", null=True),
        ),
        migrations.AlterField(
            model_name="webhook",
            name="secret",
            field=models.CharField(
                default=apps.registry.models._webhook_secret,
                help_text="The HMAC-SHA256 key (webhooks).",
                max_length=100,
            ),
        ),
        migrations.DeleteModel(
            name="WebhookDeliveryAttempt",
        ),
        migrations.DeleteModel(
            name="WebhookDelivery",
        ),
    ]
