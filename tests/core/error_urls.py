"""A URLconf for tests/core/test_exceptions.py: an API view and a page that raise the domain error they are
named for, next to the console's own URLs (which the page's base template links to)."""

from __future__ import annotations

from collections.abc import Callable

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from apps.core.exceptions import Conflict, NotFound, PayloadTooLarge, PermissionDenied, ValidationError

ERRORS: dict[str, Callable[[], Exception]] = {
    "not-found": lambda: NotFound("No such deployment."),
    "permission": lambda: PermissionDenied("This needs the editor role in project 'p'; you are viewer."),
    "gate": lambda: PermissionDenied("v1 is in no stage: a production deployment needs …", field="model_version"),
    "conflict": lambda: Conflict("Deployment iris changed: reload it and try again."),
    "validation": lambda: ValidationError("Must be between 1 and 8, not 9.", field="replicas"),
    "too-large": lambda: PayloadTooLarge("file: the upload is larger than the limit of 1,000 bytes"),
    "django-validation": lambda: DjangoValidationError({"name": "A dataset needs a name."}),
}


class RaiseApi(APIView):
    permission_classes = [AllowAny]

    def post(self, request: Request, kind: str) -> None:
        raise ERRORS[kind]()


def raise_page(request: HttpRequest, kind: str) -> HttpResponse:
    raise ERRORS[kind]()


urlpatterns = [
    path("raise/api/<str:kind>/", RaiseApi.as_view()),
    path("raise/page/<str:kind>/", raise_page),
    path("", include("mlops_console.urls")),
]
