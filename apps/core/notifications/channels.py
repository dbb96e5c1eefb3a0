"""The transport of each channel. Adding a channel means a folder with its transport and a line here."""

from __future__ import annotations

from typing import Any, Protocol

from apps.core.notifications.choices import NotificationChannel
from apps.core.notifications.email.transport import EmailTransport
from apps.core.notifications.http import SendResult
from apps.core.notifications.message import Message
from apps.core.notifications.slack.transport import SlackTransport
from apps.core.notifications.webhook.transport import WebhookTransport


class Transport(Protocol):
    def check(self, target: dict[str, Any]) -> None:
        """Raise a ValidationError naming the field when the target cannot be sent to."""

    def shown(self, target: dict[str, Any]) -> str:
        """The target as the UI, the API and the attempt log may show it (secrets masked)."""

    def throttle_key(self, target: dict[str, Any]) -> str | None:
        """A key shared by the deliveries that must be paced together, or None."""

    def send(self, *, target: dict[str, Any], message: Message, delivery_id: int) -> SendResult:
        """One attempt; never raises for a failure of the receiver (it is in the result)."""


TRANSPORTS: dict[str, Transport] = {
    NotificationChannel.EMAIL: EmailTransport(),
    NotificationChannel.WEBHOOK: WebhookTransport(),
    NotificationChannel.SLACK: SlackTransport(),
}
