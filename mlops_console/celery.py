from __future__ import annotations

import os

from celery import Celery

# Connects the signal handlers that carry the log context (request id, user) into tasks.
from mlops_console import logs  # noqa: F401

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlops_console.settings")

app = Celery("mlops_console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
