"""Outgoing notifications: one transport per channel (email, webhook, Slack) and a delivery outbox.

A producer (the registry's events today, alerts next) builds a plain `Message` and calls
`notification_enqueue(channel=…, target=…, message=…)` inside its own transaction; a `Delivery` row exists
exactly when the producer's change committed. A Celery task claims the row with a lease (a conditional
update), sends it, records the attempt and either finishes the row or schedules the next attempt with
exponential backoff; a beat task sends every due row whose message was lost or whose worker died. A worker
killed between the claim and the send leaves the row claimed until its lease runs out; the sweep then sends it.
See docs/notifications.md.
"""
