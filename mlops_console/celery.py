from __future__ import annotations

import os

from celery import Celery, signals

# Connects the signal handlers that carry the log context (request id, user) into tasks.
from mlops_console import logs  # noqa: F401

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlops_console.settings")

app = Celery("mlops_console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_process_init.connect
def _trace_worker_process(**_: object) -> None:
    # Each worker process sets up its own exporter after the fork (its thread would not survive it); the web
    # process does in wsgi.py. Beat only queues tasks and is not traced.
    from mlops_console.tracing import setup_tracing

    setup_tracing()
