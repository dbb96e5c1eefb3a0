"""System health: is the console's machinery alive, and how are the model servers doing.

Global parts (database, broker, queue depths, Celery workers, beat) describe the whole installation and are
shown to staff only; the model servers, reconcile lag and event-shipping drops are per deployment and shown
for the deployments of the user's projects. Every check answers within about a second (short timeouts), and
a part that cannot be known with the configured broker says "unknown" rather than guessing.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from kombu.transport.redis import PRIORITY_STEPS

from apps.deployments.choices import DeploymentStatus
from apps.deployments.models import Deployment
from apps.monitoring.models import Heartbeat
from apps.telemetry.models import ServerShippingReport
from mlops_console.celery import app as celery_app

logger = logging.getLogger(__name__)

# How long the page waits for the database, the broker and the workers' answers.
CHECK_TIMEOUT_SECONDS = 1.0
# Beat sends the heartbeat task every HEARTBEAT_SECONDS; no tick for LATE_AFTER_BEATS of them means beat is down.
HEARTBEAT_SECONDS = 30
LATE_AFTER_BEATS = 4
# A deployment not observed by the reconciler for this many of its rounds is behind (the reconciler is stuck).
RECONCILE_LATE_ROUNDS = 3
# Shipping reports older than this belong to processes gone long ago and are left out of the totals.
SHIPPING_REPORT_MAX_AGE = timedelta(days=1)
# kombu's Redis transport keeps each priority level of a queue in its own list named queue + SEP + priority.
_REDIS_PRIORITY_SEP = "\x06\x16"

OK, PROBLEM, UNKNOWN = "ok", "problem", "unknown"


def _broker_scheme() -> str:
    return settings.CELERY_BROKER_URL.split("://", 1)[0].lower()


def _redis_broker() -> redis.Redis | None:
    if _broker_scheme() not in {"redis", "rediss"}:
        return None
    return redis.Redis.from_url(
        settings.CELERY_BROKER_URL, socket_timeout=CHECK_TIMEOUT_SECONDS, socket_connect_timeout=CHECK_TIMEOUT_SECONDS
    )


def database_check() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means the database is unreachable; the log has it
        logger.exception("system health: the database does not answer")
        return {"status": PROBLEM, "detail": f"unreachable: {type(exc).__name__}"}
    return {
        "status": OK,
        "vendor": connection.vendor,
        "latency_ms": round(1000 * (time.perf_counter() - started), 2),
        "detail": f"{connection.vendor} answered",
    }


def queue_names() -> list[str]:
    """The queues tasks go to: the default one and any the Celery configuration declares."""
    names = [settings.CELERY_TASK_DEFAULT_QUEUE]
    for queue in celery_app.conf.task_queues or ():
        if queue.name not in names:
            names.append(queue.name)
    return names


def _filesystem_depth(queue: str) -> int:
    # kombu's filesystem transport writes each message as `<time>_<uuid>.<queue>.msg` in its folder.
    folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
    if not folder.is_dir():
        return 0
    suffix = f".{queue}.msg"
    return sum(1 for entry in os.scandir(folder) if entry.name.endswith(suffix))


def broker_and_queues() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Whether the broker answers, and each queue's depth (messages waiting): Redis lists or filesystem files."""
    scheme = _broker_scheme()
    names = queue_names()
    client = _redis_broker()
    if client is not None:
        keys = [[name, *(f"{name}{_REDIS_PRIORITY_SEP}{step}" for step in PRIORITY_STEPS if step)] for name in names]
        try:
            client.ping()
            pipe = client.pipeline(transaction=False)
            for group in keys:
                for key in group:
                    pipe.llen(key)
            lengths = iter(pipe.execute())
        except redis.RedisError as exc:
            broker = {"status": PROBLEM, "transport": scheme, "detail": f"unreachable: {type(exc).__name__}"}
            return broker, [{"queue": name, "depth": None} for name in names]
        finally:
            client.close()
        queues = [
            {"queue": name, "depth": sum(next(lengths) for _ in group)} for name, group in zip(names, keys, strict=True)
        ]
        return {"status": OK, "transport": scheme, "detail": "Redis answered PING"}, queues
    if scheme == "filesystem":
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        if not folder.is_dir():
            return (
                {"status": PROBLEM, "transport": scheme, "detail": f"the broker folder {folder} does not exist"},
                [{"queue": name, "depth": None} for name in names],
            )
        queues = [{"queue": name, "depth": _filesystem_depth(name)} for name in names]
        return {"status": OK, "transport": scheme, "detail": f"folder {folder}"}, queues
    unknown = {"status": UNKNOWN, "transport": scheme, "detail": f"no check for the {scheme} transport"}
    return unknown, [{"queue": name, "depth": None} for name in names]


def _heartbeat(name: str) -> Heartbeat | None:
    return Heartbeat.objects.filter(name=name).first()


def _age(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 1)


def workers(now: datetime) -> dict[str, Any]:
    """The Celery workers that answer a broadcast, with the tasks each runs now; with a broker that cannot
    broadcast (the filesystem one), only the last run of beat's heartbeat task tells a worker is alive."""
    ran = _heartbeat("worker")
    last = {
        "at": ran.seen_at if ran else None,
        "age_seconds": _age(ran.seen_at if ran else None, now),
        "hostname": ran.detail.get("hostname") if ran else None,
    }
    if _broker_scheme() not in {"redis", "rediss", "amqp", "amqps", "pyamqp"}:
        late = ran is None or (now - ran.seen_at).total_seconds() > LATE_AFTER_BEATS * HEARTBEAT_SECONDS
        return {
            "status": PROBLEM if late else UNKNOWN,
            "detail": f"the {_broker_scheme()} broker cannot ask workers; "
            + ("no worker ran the heartbeat task lately" if late else "a worker ran the heartbeat task lately"),
            "workers": [],
            "last_heartbeat_task": last,
        }
    try:
        active = celery_app.control.inspect(timeout=CHECK_TIMEOUT_SECONDS).active() or {}
    except Exception as exc:  # noqa: BLE001 - a broker failure is reported as such (the broker check says why)
        return {"status": PROBLEM, "detail": f"inspect failed: {exc}", "workers": [], "last_heartbeat_task": last}
    found = [
        {
            "hostname": hostname,
            "active": [
                {
                    "name": task.get("name"),
                    "id": task.get("id"),
                    "started": (
                        datetime.fromtimestamp(task["time_start"], tz=timezone.get_current_timezone())
                        if task.get("time_start")
                        else None
                    ),
                }
                for task in tasks
            ],
        }
        for hostname, tasks in sorted(active.items())
    ]
    return {
        "status": OK if found else PROBLEM,
        "detail": f"{len(found)} worker(s) answered" if found else "no worker answered within a second",
        "workers": found,
        "last_heartbeat_task": last,
    }


def beat(now: datetime) -> dict[str, Any]:
    tick = _heartbeat("beat")
    if tick is None:
        return {"status": PROBLEM, "last_tick": None, "age_seconds": None, "detail": "beat never sent a task"}
    age = (now - tick.seen_at).total_seconds()
    late = age > LATE_AFTER_BEATS * HEARTBEAT_SECONDS
    return {
        "status": PROBLEM if late else OK,
        "last_tick": tick.seen_at,
        "age_seconds": round(age, 1),
        "task": tick.detail.get("task"),
        "detail": f"no task sent for {age:.0f} s" if late else "sending tasks",
    }


def _replica(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "replica": entry.get("replica"),
        "health": entry.get("health"),
        "url": entry.get("url"),
        "pid": entry.get("pid"),
        "container_id": (entry.get("container_id") or "")[:12] or None,
        "restarts": entry.get("restarts", 0),
        "crash_loop": bool(entry.get("crash_loop")),
        "cpu_percent": entry.get("cpu_percent"),
        "rss_bytes": entry.get("rss_bytes"),
        "detail": entry.get("detail", ""),
    }


def _shipping(deployment_ids: list[int], now: datetime) -> dict[int, dict[str, Any]]:
    """Per deployment: events its servers dropped (by reason, summed over processes), events buffered now."""
    reports = ServerShippingReport.objects.filter(
        deployment_id__in=deployment_ids, reported_at__gte=now - SHIPPING_REPORT_MAX_AGE
    ).only("deployment_id", "dropped", "buffered", "reported_at")
    shipping: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"dropped": {}, "dropped_total": 0, "buffered": 0, "servers": 0, "last_report": None}
    )
    for report in reports:
        entry = shipping[report.deployment_id]
        for reason, count in report.dropped.items():
            entry["dropped"][reason] = entry["dropped"].get(reason, 0) + count
            entry["dropped_total"] += count
        entry["buffered"] += report.buffered
        entry["servers"] += 1
        if entry["last_report"] is None or report.reported_at > entry["last_report"]:
            entry["last_report"] = report.reported_at
    return shipping


def deployments_health(*, user: object, now: datetime) -> list[dict[str, Any]]:
    """The model servers of the deployments in the user's projects that run or should run (not stopped)."""
    deployments = list(Deployment.objects.for_user(user).active().select_related("project"))
    shipping = _shipping([deployment.pk for deployment in deployments], now)
    late_after = RECONCILE_LATE_ROUNDS * settings.DEPLOYMENTS_RECONCILE_SECONDS
    rows = []
    for deployment in deployments:
        observed = deployment.observed or {}
        replicas = [_replica(entry) for entry in observed.get("replicas", [])]
        lag = _age(deployment.observed_at, now)
        problems = []
        if deployment.status in {DeploymentStatus.FAILED, DeploymentStatus.DEGRADED}:
            problems.append(f"status {deployment.status}")
        if lag is None or lag > late_after:
            problems.append("not observed by the reconciler lately")
        if deployment.applied_generation < deployment.generation:
            problems.append(f"generation {deployment.generation} not applied yet")
        if any(replica["crash_loop"] for replica in replicas):
            problems.append("a replica is in a crash loop")
        ships = shipping.get(deployment.pk) or {
            "dropped": {},
            "dropped_total": 0,
            "buffered": 0,
            "servers": 0,
            "last_report": None,
        }
        if ships["dropped_total"]:
            problems.append(f"{ships['dropped_total']} prediction events dropped")
        rows.append(
            {
                "id": deployment.pk,
                "name": deployment.name,
                "project": deployment.project.slug,
                "status": deployment.status,
                "url": deployment.get_absolute_url(),
                "replicas_wanted": deployment.replicas,
                "replicas_ready": sum(1 for replica in replicas if replica["health"] == "ready"),
                "replicas": replicas,
                "reconcile": {
                    "generation": deployment.generation,
                    "applied_generation": deployment.applied_generation,
                    "observed_at": deployment.observed_at,
                    "lag_seconds": lag,
                },
                "shipping": ships,
                "status_summary": PROBLEM if problems else OK,
                "problems": problems,
            }
        )
    return rows


def system_health(*, user: object) -> dict[str, Any]:
    """Everything the health page and API show to `user`: the global parts only for staff."""
    now = timezone.now()
    deployments = deployments_health(user=user, now=now)
    problems = [f"deployment {row['name']}: {problem}" for row in deployments for problem in row["problems"]]
    system = None
    if getattr(user, "is_staff", False):
        database = database_check()
        broker, queues = broker_and_queues()
        system = {
            "database": database,
            "broker": broker,
            "queues": queues,
            "workers": workers(now),
            "beat": beat(now),
        }
        problems += [
            f"{part}: {system[part]['detail']}"
            for part in ("database", "broker", "workers", "beat")
            if system[part]["status"] == PROBLEM
        ]
    return {
        "checked_at": now,
        "status": PROBLEM if problems else OK,
        "problems": problems,
        "system": system,
        "deployments": deployments,
    }
