"""Domain errors: how a service says no. Mapped to HTTP once, for the API and for the HTML views.

Services (and the helpers they call) raise these, never HTTP exceptions, so the CLI, the admin, tasks and the API
see the same refusal. The message is for people: it says what is wrong and what to do next; `field` names the
input at fault when there is one.

    class              status  API body (apps.core.api_errors)        pages (apps.core.middleware)
    NotFound            404    {"detail": message}                    the 404 page
    PermissionDenied    403    {"detail": message} or {field: [msg]}  the 403 page, with the message
    Conflict            409    {"detail": message} or {field: [msg]}  (*)
    ValidationError     400    {field: [message]}                     (*), or the form again with the error on its field
    PayloadTooLarge     413    {"detail": message}                    (*); upload views answer it themselves
    ServiceUnavailable  503    {"detail": message}                    (*)

    (*) back to the page the form was posted from (a same-site Referer) with the message; without one, an error
        page with the status and the message.

NotFound, PermissionDenied and ValidationError also subclass Django's Http404, PermissionDenied and
ValidationError, so Django's own handling (404/403 pages, `form.add_error`, `exc.message_dict`) treats them alike.
Django's ValidationError with a `{field: message}` dict, as model validation raises it, is answered the same way
as ours; new code raises `apps.core.exceptions.ValidationError(message, field=...)`.
A view catches a domain error only to show it on a form it renders again (the error on its field).
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404


class DomainError(Exception):
    """A refusal with a message for people and, when one input is at fault, the name of that field."""

    status_code = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(DomainError, Http404):
    """The object does not exist, or the actor may not know that it does (outsiders of its project)."""

    status_code = 404


class PermissionDenied(DomainError, DjangoPermissionDenied):
    """The actor may see the object but lacks the role (or a gate refuses) for this change."""

    status_code = 403


class Conflict(DomainError):
    """The object changed since the caller read it, or its state does not allow this change now."""

    status_code = 409


class ValidationError(DomainError, DjangoValidationError):
    """An input is wrong; `field` names it (API: `{field: [message]}`, like DRF's own validation errors)."""

    status_code = 400

    def __init__(self, message: str, *, field: str) -> None:
        DjangoValidationError.__init__(self, {field: [message]})
        self.field = field
        self.text = message

    def __str__(self) -> str:
        return self.text


class PayloadTooLarge(DomainError):
    """The request body is larger than the upload limit."""

    status_code = 413


class ServiceUnavailable(DomainError):
    """A service the change needs is down; what the message says was saved stays saved (see apps.core.queueing)."""

    status_code = 503
