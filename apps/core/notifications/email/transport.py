"""Email: the message as a plain-text mail to one address, through Django's configured email backend."""

from __future__ import annotations

import smtplib
from typing import Any

from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage, get_connection
from django.core.validators import validate_email

from apps.core.notifications.http import SendResult
from apps.core.notifications.message import Message

SUBJECT_MAX = 200


def body(message: Message) -> str:
    lines = [message.text] if message.text else []
    if message.fields:
        width = max(len(label) for label, _ in message.fields) + 2
        lines.append("\n".join(f"{label + ':':<{width}}{value}" for label, value in message.fields))
    if message.link:
        lines.append(f"Open it in the console: {message.link}")
    lines.append("— MLOps console")
    return "\n\n".join(lines) + "\n"


class EmailTransport:
    """Target: `{"to": <address>}`."""

    def check(self, target: dict[str, Any]) -> None:
        try:
            validate_email(target["to"])
        except ValidationError:
            raise ValidationError({"to": f"{target['to']!r} is not an email address"}) from None

    def shown(self, target: dict[str, Any]) -> str:
        return target["to"]

    def throttle_key(self, target: dict[str, Any]) -> str | None:
        return None

    def send(self, *, target: dict[str, Any], message: Message, delivery_id: int) -> SendResult:
        mail = EmailMessage(subject=message.subject[:SUBJECT_MAX], body=body(message), to=[target["to"]])
        try:
            with get_connection() as connection:
                connection.send_messages([mail])
        except smtplib.SMTPRecipientsRefused as exc:
            # The server refuses this address; another attempt would be refused the same way.
            return SendResult(ok=False, error=f"SMTP: {exc}", permanent=True, url=target["to"])
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult(ok=False, error=f"SMTP: {type(exc).__name__}: {exc}", url=target["to"])
        return SendResult(ok=True, url=target["to"])
