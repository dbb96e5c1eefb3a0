"""Registry events and the handlers that receive them (the channels, and hooks of other apps).

The contract (see docs/registry.md):

- A service stores a `RegistryEvent` row in its own transaction (`event_emit`), so an event exists exactly
  when the change it describes was committed.
- After the commit, a Celery task runs every registered handler with the event (`event_dispatch`). A beat
  task picks up events whose dispatch was lost (a worker crash, a broker outage).
- A handler is `handler(event: RegistryEvent) -> None`, registered once from an `AppConfig.ready()` with
  `register_event_handler(name, handler)`. It must be quick and idempotent: slow or fallible work (HTTP,
  SMTP) is queued as its own task with its own retries. A handler that raises is logged and the others
  still run.

No Django signals: the list of handlers is explicit, ordered and visible in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from apps.core.models import Project

if TYPE_CHECKING:
    from apps.registry.models import ModelVersion, PromotionRequest, RegisteredModel, RegistryEvent

logger = logging.getLogger(__name__)

EventHandler = Callable[["RegistryEvent"], None]
_HANDLERS: dict[str, EventHandler] = {}
# An event not dispatched after this long lost its queue message; the beat task dispatches it.
STRAGGLER_AFTER = timedelta(minutes=2)
STRAGGLER_BATCH = 200


def register_event_handler(name: str, handler: EventHandler) -> None:
    """Add (or replace, by name) a handler that every registry event is delivered to."""
    _HANDLERS[name] = handler


def event_handlers() -> dict[str, EventHandler]:
    return dict(_HANDLERS)


def event_emit(
    *,
    type: str,  # noqa: A002 (the event's type, as stored)
    project: Project,
    actor: AbstractBaseUser | None,
    model: RegisteredModel | None = None,
    version: ModelVersion | None = None,
    request: PromotionRequest | None = None,
    payload: dict[str, Any] | None = None,
) -> RegistryEvent:
    """Store an event in the caller's transaction and dispatch it to the handlers once that commits."""
    from apps.registry.models import RegistryEvent
    from apps.registry.tasks import registry_event_dispatch_task

    body = {
        "project": project.slug,
        "model": {"id": model.pk, "name": model.name} if model else None,
        "version": {"id": version.pk, "number": version.number, "stage": version.stage} if version else None,
        "request": {"id": request.pk, "status": request.status, "target": request.target_display} if request else None,
        **(payload or {}),
    }
    event = RegistryEvent.objects.create(
        project=project,
        model=model,
        version=version,
        request=request,
        type=type,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        payload=body,
    )
    transaction.on_commit(lambda: registry_event_dispatch_task.delay(event.pk))
    return event


def event_dispatch(*, event_id: int) -> bool:
    """Run every handler once for the event; False when another worker already did (safe to call twice)."""
    from apps.registry.models import RegistryEvent

    claimed = RegistryEvent.objects.filter(pk=event_id, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    if not claimed:
        return False
    event = RegistryEvent.objects.select_related("project", "model", "version", "request", "actor").get(pk=event_id)
    for name, handler in event_handlers().items():
        try:
            handler(event)
        except Exception:  # one broken channel must not keep the event from the others
            logger.exception("registry event handler %r failed for event %s", name, event_id)
    return True


def events_pending_ids() -> list[int]:
    from apps.registry.models import RegistryEvent

    cutoff = timezone.now() - STRAGGLER_AFTER
    pending = RegistryEvent.objects.filter(dispatched_at__isnull=True, created_at__lt=cutoff)
    return list(pending.order_by("pk").values_list("pk", flat=True)[:STRAGGLER_BATCH])
