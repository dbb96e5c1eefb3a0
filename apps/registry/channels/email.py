"""Email: new requests go to the project's approvers, decisions to the requester. Sent by a Celery task."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.template.loader import render_to_string

from apps.registry import selectors
from apps.registry.choices import RegistryEventType
from apps.registry.models import RegistryEvent

EMAILED_EVENTS = frozenset(
    {
        RegistryEventType.REQUEST_CREATED,
        RegistryEventType.REQUEST_APPROVED,
        RegistryEventType.REQUEST_REJECTED,
        RegistryEventType.REQUEST_EXPIRED,
    }
)


def handle_event(event: RegistryEvent) -> None:
    if event.type not in EMAILED_EVENTS:
        return
    from apps.registry.tasks import registry_event_email_task

    transaction.on_commit(lambda: registry_event_email_task.delay(event.pk))


def event_email_send(*, event_id: int) -> int:
    """Send one message per recipient with an address; returns how many were sent."""
    event = RegistryEvent.objects.select_related("project", "model", "version", "request", "actor").get(pk=event_id)
    recipients = [user for user in selectors.event_recipients(event) if user.email]
    if not recipients:
        return 0
    link = settings.CONSOLE_BASE_URL + (
        event.request.get_absolute_url() if event.request_id else event.model.get_absolute_url()
    )
    subject = f"[{event.project.name}] {event.summary}"
    messages = []
    for user in recipients:
        body = render_to_string("registry/email/event.txt", {"event": event, "user": user, "link": link})
        messages.append(EmailMessage(subject=subject[:200], body=body, to=[user.email]))
    with get_connection() as connection:
        return connection.send_messages(messages) or 0
