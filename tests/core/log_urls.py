"""A URLconf for tests/core/test_logs.py: a page that logs a line and queues a task that logs one."""

from __future__ import annotations

import logging

from celery import shared_task
from django.http import HttpRequest, HttpResponse
from django.urls import path

from mlops_console.logs import log_context

logger = logging.getLogger("tests.log_probe")


@shared_task(name="tests.log_probe")
def log_probe_task(word: str) -> None:
    logger.info("task says %s", word)


def probe(request: HttpRequest) -> HttpResponse:
    with log_context(project="fraud", deployment=7):
        logger.info("view says hello (signed in: %s)", request.user.is_authenticated)
        log_probe_task.delay("hello")
    return HttpResponse("ok")


urlpatterns = [path("probe/", probe)]
