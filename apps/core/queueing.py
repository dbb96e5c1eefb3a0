"""Sending Celery tasks once the caller's transaction commits: the one way services queue work.

The broker (Redis) can be down while the database is up. A send that fails then must not lose the work nor
answer a bare 500 after the commit: every piece of work queued here is also found by a beat sweep (the sweep
named at each call site), so the failed send is logged and the request is answered 503 by raising
ServiceUnavailable from the commit callback. Django runs on_commit callbacks when the outermost atomic block
exits, inside the service call, so the error reaches the view and is mapped like any domain error
(apps.core.api_errors, apps.core.middleware). Callbacks registered after the failed one in the same
transaction do not run; they are sends to the same broker and their sweeps take them over too.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from django.db import transaction
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from apps.core.exceptions import ServiceUnavailable

logger = logging.getLogger(__name__)

BROKER_DOWN = (OperationalError, RedisConnectionError, RedisTimeoutError, ConnectionError)

QUEUE_DOWN_MESSAGE = (
    "The change was saved, but the task queue is unreachable, so it is not applied yet; "
    "it will be applied automatically when the task queue is back."
)


def task_send(task: Task, *args: Any, task_id: str | None = None) -> None:
    """Send `task(*args)` now; a broker that cannot be reached is logged and raised as ServiceUnavailable."""
    try:
        task.apply_async(args=args, task_id=task_id)
    except BROKER_DOWN as exc:
        logger.error(
            "could not queue %s%r: the broker is unreachable (%s); a beat sweep will pick it up", task.name, args, exc
        )
        raise ServiceUnavailable(QUEUE_DOWN_MESSAGE) from exc


def enqueue_on_commit(task: Task, *args: Any, task_id: str | None = None) -> None:
    """Send `task(*args)` once the current transaction commits (at once outside one), as `task_send` does."""
    transaction.on_commit(lambda: task_send(task, *args, task_id=task_id))
