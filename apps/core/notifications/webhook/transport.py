"""Webhooks: the message as a signed JSON POST.

Signing: `X-MLOps-Timestamp: <unix seconds>` and `X-MLOps-Signature: sha256=<hex>`, the HMAC-SHA256 with the
target's secret of `<timestamp>.<raw body>`. A receiver recomputes it and rejects old timestamps (replays).
The body is the message's `data` with `type`, `subject`, `text`, `fields` and `url` (the link) added.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from apps.core.notifications.http import SendResult, check_url, mask_url, post
from apps.core.notifications.message import Message

SIGNATURE_HEADER = "X-MLOps-Signature"
TIMESTAMP_HEADER = "X-MLOps-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def body(message: Message) -> bytes:
    document = {
        **message.data,
        "type": message.kind,
        "subject": message.subject,
        "text": message.text,
        "fields": dict(message.fields),
        "url": message.link,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class WebhookTransport:
    """Target: `{"url": …, "secret": …}`; the URL is shown masked (`mask_url`), the secret never."""

    def check(self, target: dict[str, Any]) -> None:
        check_url(target["url"])

    def shown(self, target: dict[str, Any]) -> str:
        return mask_url(target["url"])

    def throttle_key(self, target: dict[str, Any]) -> str | None:
        return None

    def send(self, *, target: dict[str, Any], message: Message, delivery_id: int) -> SendResult:
        payload = body(message)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "mlops-console-webhooks/1",
            "X-MLOps-Event": message.kind,
            "X-MLOps-Delivery": str(delivery_id),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(target["secret"], timestamp, payload),
        }
        return post(target["url"], payload, headers, shown=mask_url)
