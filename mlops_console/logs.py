"""Log context: every log line names the request, user, project and deployment it belongs to.

A web request gets an id (a well-formed incoming X-Request-Id, else a new one) that the response returns. The
tasks the request queues carry the id, the user, the project and the deployment in a Celery message header, so a
worker's log lines for that task carry them too. `LOG_FORMAT=json` writes one JSON object per line
(docs/observability.md); otherwise lines are for people.
"""

from __future__ import annotations

import inspect
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from celery import signals
from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject, empty
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID_HEADER = "X-Request-Id"
# The Celery message header that carries the log context from the code that queues a task to the worker.
TASK_HEADER = "mlops_log_context"
FIELDS = ("request_id", "user", "project", "deployment")
# Ids from a proxy or a client are taken as they are only when they cannot forge or break a log line.
WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_context: ContextVar[Mapping[str, str] | None] = ContextVar("log_context", default=None)
_request: ContextVar[HttpRequest | None] = ContextVar("log_request", default=None)


def _username(request: HttpRequest) -> str | None:
    # Only a user already known: resolving a lazy user here would query the database from inside logging.
    user = request.__dict__.get("user")
    if user is None or (isinstance(user, SimpleLazyObject) and user._wrapped is empty):
        return None
    return user.get_username() if user.is_authenticated else None


def current_context() -> dict[str, str]:
    """The log fields that apply here and now (only those that are known)."""
    fields = dict(_context.get() or {})
    request = _request.get()
    if request is not None and "user" not in fields and (username := _username(request)):
        fields["user"] = username
    return fields


@contextmanager
def log_context(**fields: str | int) -> Iterator[None]:
    """Adds fields (project, deployment...) to every log line written inside the block."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields: {', '.join(sorted(unknown))}")
    token = _context.set({**(_context.get() or {}), **{key: str(value) for key, value in fields.items()}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Puts the context fields on each record (None where unknown), so that formats can name them."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_context()
        for key in FIELDS:
            if not hasattr(record, key):
                setattr(record, key, context.get(key))
        return True


def json_formatter() -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s %(request_id)s %(user)s %(project)s %(deployment)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


class RequestIdMiddleware:
    """Gives each request its id and puts it (and the request, for the user) in the log context."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = incoming if WELL_FORMED_ID.fullmatch(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        context_token = _context.set({"request_id": request_id})
        request_token = _request.set(request)
        try:
            response = self.get_response(request)
        finally:
            _request.reset(request_token)
            _context.reset(context_token)
        response[REQUEST_ID_HEADER] = request_id
        return response

    def process_view(self, request: HttpRequest, view: Any, args: Any, kwargs: dict[str, Any]) -> None:
        # The project or deployment a page or an API call is about, named by its URL (the API router's and the
        # pages' url names: project-… with a slug, deployment-… with a pk).
        name = request.resolver_match.url_name or ""
        fields = dict(_context.get() or {})
        if name.startswith("project-") and "slug" in kwargs:
            fields["project"] = str(kwargs["slug"])
        if name.startswith("deployment-") and "pk" in kwargs:
            fields["deployment"] = str(kwargs["pk"])
        _context.set(fields)


@signals.before_task_publish.connect
def _add_context_header(headers: dict[str, Any] | None = None, **_: Any) -> None:
    context = current_context()
    if headers is not None and context:
        headers[TASK_HEADER] = context


_task_tokens: dict[str, Any] = {}


def _task_arguments(task: Any, args: Any, kwargs: Any) -> dict[str, str]:
    """The deployment a task works on, from its `deployment_id` argument (tasks take ids, not objects)."""
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
    except TypeError:
        return {}
    deployment = bound.arguments.get("deployment_id")
    return {"deployment": str(deployment)} if deployment is not None else {}


@signals.task_prerun.connect
def _enter_task_context(task_id: str, task: Any, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    request = task.request
    if request.is_eager:
        # Run in the caller's thread: the caller's context applies, with what the arguments name.
        fields = {**(_context.get() or {}), **_task_arguments(task, args, kwargs)}
        _task_tokens[task_id] = (_context.set(fields), _request.set(_request.get()))
        return
    # A worker puts custom message headers on the request; tasks run one after another in a thread, so the
    # context is set for every task (empty when none came) and never leaks from the one before.
    carried = getattr(request, TASK_HEADER, None) or (request.headers or {}).get(TASK_HEADER) or {}
    fields = {key: str(value) for key, value in carried.items() if key in FIELDS}
    fields.update(_task_arguments(task, args, kwargs))
    _task_tokens[task_id] = (_context.set(fields), _request.set(None))


@signals.task_postrun.connect
def _leave_task_context(task_id: str, **_: Any) -> None:
    tokens = _task_tokens.pop(task_id, None)
    if tokens is not None:
        _context.reset(tokens[0])
        _request.reset(tokens[1])
