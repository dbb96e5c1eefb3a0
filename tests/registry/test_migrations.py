"""The move of webhook deliveries into the core outbox (registry 0003), run forwards on a database with rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("core", "0001_initial"), ("registry", "0002_lineage_runs")]
AFTER = [("core", "0002_notification_outbox"), ("registry", "0003_notifications_outbox")]


@pytest.mark.django_db(transaction=True)
def test_webhook_deliveries_and_attempts_are_copied_into_the_outbox() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    project = old.get_model("core", "Project").objects.create(name="Demo", name_key="demo", slug="demo")
    event = old.get_model("registry", "RegistryEvent").objects.create(
        project=project, type="version.registered", payload={"summary": "iris version 1 registered."}
    )
    hook = old.get_model("registry", "Webhook").objects.create(
        project=project, url="https://hooks.example.com/in", secret="k3y"
    )
    WebhookDelivery = old.get_model("registry", "WebhookDelivery")
    created = timezone.now() - timedelta(days=2)
    done = WebhookDelivery.objects.create(webhook=hook, event=event, status="succeeded", attempts=2)
    WebhookDelivery.objects.filter(pk=done.pk).update(created_at=created, finished_at=created)
    second = old.get_model("registry", "RegistryEvent").objects.create(project=project, type="stage.changed")
    waiting = WebhookDelivery.objects.create(
        webhook=hook, event=second, status="retrying", attempts=1, next_attempt_at=created
    )
    Attempt = old.get_model("registry", "WebhookDeliveryAttempt")
    Attempt.objects.create(delivery=done, number=1, url=hook.url, status_code=500, error="", duration_ms=5)
    Attempt.objects.create(delivery=done, number=2, url=hook.url, status_code=204, error="", duration_ms=4)
    Attempt.objects.create(delivery=waiting, number=1, url=hook.url, error="refused: nope", duration_ms=1)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    Delivery = new.get_model("core", "Delivery")
    copied = Delivery.objects.get(message__kind="version.registered")
    assert (copied.channel, copied.status, copied.attempts) == ("webhook", "succeeded", 2)
    assert copied.target == {"url": "https://hooks.example.com/in", "secret": "k3y"}
    assert copied.source == f"registry.webhook:{hook.pk}" and copied.created_at == created
    assert copied.delivered_at == created
    assert copied.message["data"]["id"] == event.pk and copied.message["subject"] == "[Demo] iris version 1 registered."
    attempts = list(copied.attempt_log.order_by("number").values_list("number", "outcome", "status_code"))
    assert attempts == [(1, "failed", 500), (2, "succeeded", 204)]
    pending = Delivery.objects.get(message__kind="stage.changed")
    # Still retrying: due at once, so the outbox's sweep sends it.
    assert (pending.status, pending.next_attempt_at, pending.last_error) == ("retrying", created, "refused: nope")
    assert pending.attempt_log.get().outcome == "refused"
    assert "registry_webhookdelivery" not in connection.introspection.table_names()

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())
