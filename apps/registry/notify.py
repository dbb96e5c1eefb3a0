"""Registry events as notifications: the registry is one producer of the outbox in apps/core/notifications.

`event_notify` runs inside the transaction that stores the event (`event_emit`), so a delivery exists exactly
when the event does, whatever happens to the dispatcher afterwards:

- every active webhook or Slack subscription of the project that wants the event type gets one delivery;
- new requests are emailed to the project's approvers, decisions and expiries to the requester.

In-app notifications (the bell) stay registry rows, written by the `inapp` event handler after commit.
"""

from __future__ import annotations

from django.conf import settings

from apps.core.notifications.choices import NotificationChannel
from apps.core.notifications.message import Message
from apps.core.notifications.services import notification_enqueue
from apps.registry import selectors
from apps.registry.choices import RegistryEventType
from apps.registry.models import Notification, RegistryEvent, Webhook

EMAILED_EVENTS = frozenset(
    {
        RegistryEventType.REQUEST_CREATED,
        RegistryEventType.REQUEST_APPROVED,
        RegistryEventType.REQUEST_REJECTED,
        RegistryEventType.REQUEST_EXPIRED,
    }
)


def event_link(event: RegistryEvent) -> str:
    if event.request_id:
        return settings.CONSOLE_BASE_URL + event.request.get_absolute_url()
    if event.model_id:
        return settings.CONSOLE_BASE_URL + event.model.get_absolute_url()
    return settings.CONSOLE_BASE_URL


def event_message(event: RegistryEvent) -> Message:
    """The event in words (subject, fields) for people, and as the documented JSON document for webhooks."""
    fields: list[tuple[str, str]] = []
    if event.model_id:
        fields.append(("Model", event.model.name))
    if event.version_id:
        fields.append(("Version", event.version.display_name))
    if event.request_id:
        request = event.request
        fields += [("Target", request.target_display), ("Status", request.get_status_display())]
        if request.is_open:
            fields.append(("Expires", f"{request.expires_at:%Y-%m-%d %H:%M} UTC"))
    if event.payload.get("comment"):
        fields.append(("Comment", str(event.payload["comment"])))
    fields.append(("Project", event.project.name))
    return Message(
        subject=f"[{event.project.name}] {event.summary}",
        text=event.summary,
        fields=tuple(fields),
        link=event_link(event),
        kind=event.type,
        data={
            "id": event.pk,
            "created_at": event.created_at.isoformat(),
            "project": event.project.slug,
            "actor": event.actor.get_username() if event.actor else None,
            "data": event.payload,
        },
    )


def event_notify(event: RegistryEvent) -> int:
    """Enqueue the event's deliveries in the caller's transaction; returns how many."""
    message = event_message(event)
    deliveries = 0
    for hook in Webhook.objects.filter(project_id=event.project_id, is_active=True).order_by("pk"):
        if hook.wants(event.type):
            notification_enqueue(channel=hook.kind, target=hook.target, message=message, source=hook.source)
            deliveries += 1
    if event.type in EMAILED_EVENTS:
        for user in selectors.event_recipients(event):
            if user.email:
                notification_enqueue(
                    channel=NotificationChannel.EMAIL,
                    target={"to": user.email},
                    message=message,
                    source=f"registry.event:{event.pk}",
                )
                deliveries += 1
    return deliveries


def inapp_handle_event(event: RegistryEvent) -> None:
    """One Notification row per recipient, read from the bell in the navigation."""
    recipients = selectors.event_recipients(event)
    # ignore_conflicts: a second dispatch of the same event adds nothing (one row per user and event).
    Notification.objects.bulk_create(
        [Notification(user=user, event=event) for user in recipients], ignore_conflicts=True
    )
