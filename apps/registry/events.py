"""Registry events and the handlers that receive them (in-app notifications, and hooks of other apps).

The contract (see docs/registry.md):

- A service stores a `RegistryEvent` row in its own transaction (`event_emit`), so an event exists exactly
  when the change it describes was committed. The event's email, webhook and Slack deliveries are stored
  in the same transaction (apps/registry/notify.py) and sent by the notification outbox of apps/core.
- After the commit, a Celery task runs every registered handler with the event (`event_dispatch`): it
  claims the event with a lease, runs the handlers, and only then marks it dispatched. A worker that dies
  in between leaves the event undispatched; when the lease is over, a beat task dispatches it again
  (at least once, so handlers must be idempotent).
- A handler is `handler(event: RegistryEvent) -> None`, registered once from an `AppConfig.ready()` with
  `register_event_handler(name, handler)`. It must be quick and idempotent: slow or fallible work (HTTP,
  SMTP) is queued as its own task with its own retries. A handler that raises is logged and the others
  still run.

No Django signals: the list of handlers is explicit, ordered and visible in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.core.models import Project
from apps.core.queueing import enqueue_on_commit

if TYPE_CHECKING:
    from apps.registry.models import ModelVersion, PromotionRequest, RegisteredModel, RegistryEvent

logger = logging.getLogger(__name__)

EventHandler = Callable[["RegistryEvent"], None]
_HANDLERS: dict[str, EventHandler] = {}
# An event not dispatched after this long lost its queue message or its worker; the beat task dispatches it.
STRAGGLER_AFTER = timedelta(minutes=2)
# How long a dispatcher holds an event it claimed: longer than the dispatch task's hard time limit (90 s).
DISPATCH_LEASE = timedelta(minutes=2)
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
    """Store an event and its deliveries in the caller's transaction; dispatch it to the handlers after commit."""
    from apps.registry.models import RegistryEvent
    from apps.registry.notify import event_notify
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
    event_notify(event)
    # A lost send is taken over by the beat's registry.events_dispatch_pending (events_pending_ids).
    enqueue_on_commit(registry_event_dispatch_task, event.pk)
    return event


def _undispatched(now: datetime) -> QuerySet[RegistryEvent]:
    from apps.registry.models import RegistryEvent

    return RegistryEvent.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now), dispatched_at__isnull=True
    )


def event_dispatch(*, event_id: int) -> bool:
    """Run every handler for the event; False when it is dispatched or another worker holds it (safe twice).

    The event is marked dispatched after the handlers ran, not before: a worker killed in between leaves
    its lease to run out, and the sweep runs the handlers again.
    """
    from apps.registry.models import RegistryEvent

    now = timezone.now()
    if not _undispatched(now).filter(pk=event_id).update(claimed_until=now + DISPATCH_LEASE):
        return False
    event = RegistryEvent.objects.select_related("project", "model", "version", "request", "actor").get(pk=event_id)
    for name, handler in event_handlers().items():
        try:
            handler(event)
        except Exception:  # one broken channel must not keep the event from the others
            logger.exception("registry event handler %r failed for event %s", name, event_id)
    RegistryEvent.objects.filter(pk=event_id).update(dispatched_at=timezone.now(), claimed_until=None)
    return True


def events_pending_ids() -> list[int]:
    """Events whose dispatch was lost: old enough, not dispatched, and not held by a live lease."""
    now = timezone.now()
    pending = _undispatched(now).filter(created_at__lt=now - STRAGGLER_AFTER)
    return list(pending.order_by("pk").values_list("pk", flat=True)[:STRAGGLER_BATCH])
