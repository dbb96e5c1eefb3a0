"""Handlers the apps above core register for a delivery that finally fails (every retry spent, or refused).

Core imports no other app, so a producer that wants to know registers here, by the prefix of the deliveries'
`source` (`alerts.` for alerts). Handlers run inside the transaction that records the failure, so a notice
exists exactly when the failure does; they must not raise.
"""

from __future__ import annotations

from collections.abc import Callable

from apps.core.notifications.models import Delivery

_HANDLERS: dict[str, Callable[[Delivery], None]] = {}


def register_failure_handler(source_prefix: str, handler: Callable[[Delivery], None]) -> None:
    _HANDLERS[source_prefix] = handler


def delivery_failed(delivery: Delivery) -> None:
    for prefix, handler in _HANDLERS.items():
        if delivery.source.startswith(prefix):
            handler(delivery)
