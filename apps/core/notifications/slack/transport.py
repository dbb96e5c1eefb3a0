"""Slack: the message as Block Kit posted to an incoming webhook, with a top-level `text` fallback.

The webhook URL is the credential (whoever has it can post to the channel), so it is stored as a secret and
only ever shown masked (`mask_url`). Slack accepts about one message per second per webhook: the outbox
paces deliveries by `throttle_key` across all workers, and an HTTP 429 is retried after its `Retry-After`.
Block limits (https://api.slack.com/reference/block-kit/blocks): a header holds 150 characters, a section's
text 3,000, a section at most 10 fields of 2,000 each.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

from apps.core.notifications.http import SendResult, check_url, mask_url, post
from apps.core.notifications.message import Message

MAX_FIELDS = 10


def _escape(text: str) -> str:
    # Slack's mrkdwn treats &, < and > as control characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def blocks(message: Message) -> list[Block]:
    built: list[Block] = [HeaderBlock(text=message.subject[:150])]
    if message.text:
        built.append(SectionBlock(text=MarkdownTextObject(text=_escape(message.text)[:3000])))
    fields = [
        MarkdownTextObject(text=f"*{_escape(label)}*\n{_escape(value)}"[:2000])
        for label, value in message.fields[:MAX_FIELDS]
    ]
    if fields:
        built.append(SectionBlock(fields=fields))
    if message.link:
        built.append(ActionsBlock(elements=[ButtonElement(text="Open in the console", url=message.link)]))
    return built


def payload(message: Message) -> dict[str, Any]:
    """The fallback `text` is what notifications and screen readers show; the blocks are what the channel shows."""
    text = f"{message.subject} {message.link}".strip()
    return {"text": text, "blocks": [block.to_dict() for block in blocks(message)]}


class SlackTransport:
    """Target: `{"url": <incoming webhook URL>}`, a secret."""

    def check(self, target: dict[str, Any]) -> None:
        check_url(target["url"])

    def shown(self, target: dict[str, Any]) -> str:
        return mask_url(target["url"])

    def throttle_key(self, target: dict[str, Any]) -> str | None:
        # A hash, so the pacing table holds no secret.
        return "slack:" + hashlib.sha256(target["url"].encode()).hexdigest()

    def send(self, *, target: dict[str, Any], message: Message, delivery_id: int) -> SendResult:
        body = json.dumps(payload(message), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "mlops-console-slack/1"}
        return post(target["url"], body, headers, shown=mask_url)
