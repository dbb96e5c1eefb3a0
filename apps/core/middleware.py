from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from http import HTTPStatus

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

from apps.core.exceptions import DomainError

# The client address of the request being served, so that services can write it to the audit log
# without every call site passing the request down.
current_ip: ContextVar[str | None] = ContextVar("current_ip", default=None)


class RequestContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = current_ip.set(request.META.get("REMOTE_ADDR") or None)
        try:
            return self.get_response(request)
        finally:
            current_ip.reset(token)


class DomainErrorMiddleware:
    """The one place where a domain error that a view lets through becomes an HTML answer.

    NotFound and PermissionDenied are Django's Http404 and PermissionDenied: Django answers them with the 404
    and 403 pages (templates/404.html, 403.html; the 403 page shows the message). Any other refusal (a conflict,
    an invalid input, Django's ValidationError) of a form posted from a page of ours goes back to that page (the
    Referer) with the message, as the action views always answered; without such a page, an error page says
    why, with the error's status.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, Http404 | PermissionDenied):
            return None
        if isinstance(exc, DomainError):
            status, message = exc.status_code, str(exc)
        elif isinstance(exc, DjangoValidationError):
            status, message = HTTPStatus.BAD_REQUEST, " ".join(exc.messages)
        else:
            return None
        back = request.headers.get("Referer", "")
        safe = url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        )
        if request.method == "POST" and safe:
            messages.error(request, message)
            return redirect(back)
        title = HTTPStatus(status).phrase
        return render(request, "core/error.html", {"title": title, "message": message}, status=status)
