"""Email: the message as a mail to one address (plain text, and HTML as an alternative), through Django's
configured email backend. A message whose data holds an `idempotency_key` gets a Message-ID derived from it
and the delivery, so a mail sent twice (a worker killed after the send) is one message to mail clients."""

from __future__ import annotations

import smtplib
from typing import Any

from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.validators import validate_email
from django.utils.html import format_html, format_html_join

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


def html_body(message: Message) -> str:
    parts = [format_html("<h2>{}</h2>", message.subject)]
    if message.text:
        parts.append(format_html("<p>{}</p>", message.text))
    if message.fields:
        rows = format_html_join("", "<tr><th align='left'>{}</th><td>{}</td></tr>", message.fields)
        parts.append(format_html("<table>{}</table>", rows))
    if message.link:
        parts.append(format_html("<p><a href='{}'>Open it in the console</a></p>", message.link))
    parts.append("<p>— MLOps console</p>")
    return "<html><body>" + "".join(parts) + "</body></html>"


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
        headers = {}
        key = message.data.get("idempotency_key")
        if key:
            headers["Message-ID"] = f"<{key}.{delivery_id}@mlops-console>"
        mail = EmailMultiAlternatives(
            subject=message.subject[:SUBJECT_MAX], body=body(message), to=[target["to"]], headers=headers
        )
        mail.attach_alternative(html_body(message), "text/html")
        try:
            with get_connection() as connection:
                connection.send_messages([mail])
        except smtplib.SMTPRecipientsRefused as exc:
            # The server refuses this address; another attempt would be refused the same way.
            return SendResult(ok=False, error=f"SMTP: {exc}", permanent=True, url=target["to"])
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult(ok=False, error=f"SMTP: {type(exc).__name__}: {exc}", url=target["to"])
        return SendResult(ok=True, url=target["to"])
