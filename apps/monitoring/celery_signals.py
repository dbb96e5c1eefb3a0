"""Celery signal handlers that feed system health and /metrics: beat's last tick, and every task's count and
duration by outcome. They write to the database (one short statement each), so what the workers and beat
saw is visible to the web process; a failure to write is logged and never fails the task."""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from typing import Any

from celery import signals
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from apps.monitoring.models import TASK_BUCKET_FIELDS, TASK_DURATION_BUCKETS, Heartbeat, TaskMetric

logger = logging.getLogger(__name__)

# Beat records its tick at most this often (it may send several tasks at once).
BEAT_TICK_MIN_SECONDS = 5.0
# Task outcomes as Celery's postrun state names them; other states are not counted.
OUTCOMES = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry"}

_state: dict[str, Any] = {"in_beat": False, "last_tick": 0.0}
# task id -> perf_counter at start, per worker process (a task runs in one process from start to end).
_started: dict[str, float] = {}


def heartbeat_record(name: str, detail: dict[str, Any]) -> None:
    Heartbeat.objects.update_or_create(name=name, defaults={"seen_at": timezone.now(), "detail": detail})


def task_metric_add(*, task: str, outcome: str, seconds: float) -> None:
    """Count one run of `task`; the first run of a (task, outcome) creates its row."""
    bucket = TASK_BUCKET_FIELDS[bisect_left(TASK_DURATION_BUCKETS, seconds)]
    changes = {"count": F("count") + 1, "seconds_sum": F("seconds_sum") + seconds, bucket: F(bucket) + 1}
    if TaskMetric.objects.filter(task=task, outcome=outcome).update(**changes):
        return
    try:
        with transaction.atomic():
            TaskMetric.objects.create(task=task, outcome=outcome, count=1, seconds_sum=seconds, **{bucket: 1})
    except IntegrityError:
        # Another worker created the row first.
        TaskMetric.objects.filter(task=task, outcome=outcome).update(**changes)


@signals.beat_init.connect
def _beat_started(**_: Any) -> None:
    _state["in_beat"] = True


@signals.after_task_publish.connect
def _beat_tick(sender: str | None = None, **_: Any) -> None:
    """In the beat process: each task beat sends is a tick (throttled)."""
    if not _state["in_beat"] or time.monotonic() - _state["last_tick"] < BEAT_TICK_MIN_SECONDS:
        return
    _state["last_tick"] = time.monotonic()
    try:
        heartbeat_record("beat", {"task": sender})
    except Exception:  # noqa: BLE001 - a health record must never stop beat from scheduling
        logger.exception("could not record beat's tick")


@signals.task_prerun.connect
def _task_started(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id or "", None)
    outcome = OUTCOMES.get(state or "")
    if started is None or outcome is None or task is None:
        return
    try:
        task_metric_add(task=task.name, outcome=outcome, seconds=time.perf_counter() - started)
    except Exception:  # noqa: BLE001 - counting must never fail the task it counts
        logger.exception("could not count a run of %s", task.name)
