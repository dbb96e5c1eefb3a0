"""The message every channel sends: plain data, nothing of the app that produced it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Message:
    """What happened, in words and in data.

    - `subject`: one line (the email subject, the Slack header and notification text).
    - `text`: a paragraph or two of plain text.
    - `fields`: (label, value) pairs shown as a list (email) or as Block Kit fields (Slack), in order (pairs,
      not a dict: a JSON object's key order does not survive Postgres' jsonb).
    - `link`: an absolute URL of the console page to open.
    - `kind`: a machine name of what happened (`request.created`), sent as webhooks' `X-MLOps-Event`.
    - `data`: the structured document that webhooks POST (merged with the keys above).
    """

    subject: str
    text: str = ""
    fields: tuple[tuple[str, str], ...] = ()
    link: str = ""
    kind: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Message:
        values = {key: document[key] for key in cls.__dataclass_fields__ if key in document}
        values["fields"] = tuple((str(label), str(value)) for label, value in values.get("fields", ()))
        return cls(**values)
