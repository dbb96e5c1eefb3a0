"""In-app notifications: one Notification row per recipient, read from the bell in the navigation."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apps.registry import selectors
from apps.registry.models import Notification

if TYPE_CHECKING:
    from apps.registry.models import RegistryEvent


def handle_event(event: RegistryEvent) -> None:
    recipients = selectors.event_recipients(event)
    # ignore_conflicts: a second dispatch of the same event adds nothing (one row per user and event).
    Notification.objects.bulk_create(
        [Notification(user=user, event=event) for user in recipients], ignore_conflicts=True
    )
