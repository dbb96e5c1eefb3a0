"""A URLconf for tests/core/test_logs.py: pages that log a line (one queues a task that logs one too)."""

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


@shared_task(name="tests.log_deployment_probe")
def log_deployment_probe_task(deployment_id: int) -> None:
    logger.info("deployment task runs")


def named_probe(request: HttpRequest, **kwargs: object) -> HttpResponse:
    logger.info("named page says hello")
    return HttpResponse("ok")


def probe(request: HttpRequest) -> HttpResponse:
    with log_context(project="fraud", deployment=7):
        logger.info("view says hello (signed in: %s)", request.user.is_authenticated)
        log_probe_task.delay("hello")
    return HttpResponse("ok")


urlpatterns = [
    path("probe/", probe),
    path("projects/<slug:slug>/", named_probe, name="project-probe"),
    path("deployments/<int:pk>/", named_probe, name="deployment-probe"),
]
