"""The one way lists filter: a strict django-filter FilterSet per list, shared by its HTML page and its API viewset.

Strict means that a query parameter the list does not know, or a value it cannot read, is a 400 that names the
parameter. django-filter alone ignores unknown parameters, so a typo (`?stauts=failed`) would list everything.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import django_filters
from django import forms
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.contrib.django_filters import DjangoFilterExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from apps.core.models import Project
from apps.core.services import normalize_name

# Query parameters every list reads besides its filters: its page (`page`, and `page_size` in the API) and DRF's
# `ordering` and `format` (`?format=json`, the browsable API).
NON_FILTER_PARAMS = frozenset({"page", "page_size", "ordering", "format"})


class StrictFilterForm(forms.Form):
    """The form behind a StrictFilterSet: refuses parameters that are neither its fields nor `known_params`."""

    known_params: frozenset[str] = NON_FILTER_PARAMS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Its own element ids: a list page often holds a create form with fields of the same names.
        kwargs.setdefault("auto_id", "filter-%s")
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            # The help text documents the API parameter (OpenAPI); on a page the label says what a control does.
            field.help_text = ""
            widget = field.widget
            if isinstance(widget, forms.Select):
                widget.attrs.update({"class": "form-select form-select-sm w-auto", "onchange": "this.form.submit()"})
            elif isinstance(widget, forms.TextInput):
                widget.input_type = "search"
                widget.attrs.update({"class": "form-control form-control-sm w-auto", "placeholder": field.label})
            widget.attrs["aria-label"] = field.label

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in sorted(set(self.data) - set(self.fields) - self.known_params):
            known = ", ".join(sorted(self.fields)) or "nothing"
            message = f"Unknown filter {name!r}: this list filters by {known}."
            self._errors[name] = self.error_class([forms.ValidationError(message, code="unknown_filter")])
        return cleaned


class StrictFilterSet(django_filters.FilterSet):
    """Base of every list's FilterSet. `page_params` names what a page reads itself (the runs' `trials` box)."""

    class Meta:
        form = StrictFilterForm

    def __init__(
        self,
        data: Any = None,
        queryset: QuerySet | None = None,
        *,
        request: HttpRequest | None = None,
        prefix: str | None = None,
        page_params: Iterable[str] = (),
    ) -> None:
        super().__init__(data, queryset, request=request, prefix=prefix)
        self.known_params = NON_FILTER_PARAMS | frozenset(page_params)

    def get_form_class(self) -> type[forms.Form]:
        form_class = super().get_form_class()  # a new class on every call, so setting an attribute is safe
        form_class.known_params = self.known_params
        return form_class


def filter_page(filterset: StrictFilterSet) -> tuple[QuerySet, int]:
    """What an HTML list shows, and its status: the matching rows, or none and 400 when a filter is bad.

    The page renders the filterset's form either way, so the errors appear next to the filters.
    """
    if filterset.is_valid():
        return filterset.qs, 200
    return filterset.queryset.none(), 400


class StrictFilterBackend(DjangoFilterBackend):
    """django-filter's DRF backend, on the `list` action only.

    A detail route or action (a run's `metrics?name=`) reads its own parameters; filters are for lists. Invalid
    filters raise DRF's ValidationError with the form's errors, which is a 400 keyed by the parameter.
    """

    def filter_queryset(self, request: Any, queryset: QuerySet, view: Any) -> QuerySet:
        if getattr(view, "action", None) != "list":
            return queryset
        return super().filter_queryset(request, queryset, view)


def name_search(queryset: QuerySet, name: str, value: str) -> QuerySet:
    """A FilterSet `method`: the name contains the value as names are compared (case, Unicode form and
    URL-encoding do not matter), or the description contains it."""
    return queryset.filter(Q(name_key__contains=normalize_name(value)) | Q(description__icontains=value))


class StrictFilterSchema(DjangoFilterExtension):
    """The OpenAPI schema lists the filters on `list` operations only, where StrictFilterBackend applies them."""

    target_class = "apps.core.filters.StrictFilterBackend"
    priority = 1

    def get_schema_operation_parameters(self, auto_schema: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if getattr(auto_schema.view, "action", None) != "list":
            return []
        return super().get_schema_operation_parameters(auto_schema, *args, **kwargs)

    def resolve_filter_field(self, *args: Any) -> list[dict[str, Any]]:
        # drf-spectacular drops the help text of filters typed through @extend_schema_field (ids, flags, projects).
        parameters = super().resolve_filter_field(*args)
        help_text = args[-1].extra.get("help_text")
        for parameter in parameters:
            if help_text and "description" not in parameter:
                parameter["description"] = help_text
        return parameters


def _user_projects(request: HttpRequest | None) -> QuerySet[Project]:
    if request is None:
        return Project.objects.none()
    return Project.objects.for_user(request.user)


@extend_schema_field(OpenApiTypes.STR)
class ProjectFilter(django_filters.ModelChoiceFilter):
    """A project slug among the user's projects; any other slug is a 400 (others' projects look absent)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("field_name", "project")
        kwargs.setdefault("label", "Project")
        kwargs.setdefault("help_text", "Project slug.")
        super().__init__(
            queryset=_user_projects,
            to_field_name="slug",
            empty_label="All projects",
            error_messages={"invalid_choice": "No project with this slug among yours."},
            **kwargs,
        )


@extend_schema_field(OpenApiTypes.INT)
class IdFilter(django_filters.Filter):
    """An id: a value that is not a whole number is a 400 (an unknown id lists nothing)."""

    field_class = forms.IntegerField


class FlagField(forms.Field):
    """1/true or 0/false; anything else is an error (Django's NullBooleanField would read it as unset)."""

    def to_python(self, value: Any) -> bool | None:
        if value in (None, ""):
            return None
        text = str(value).strip().lower()
        if text in ("1", "true"):
            return True
        if text in ("0", "false"):
            return False
        raise forms.ValidationError("Use 1 or true, 0 or false.", code="invalid")


@extend_schema_field(OpenApiTypes.BOOL)
class FlagFilter(django_filters.Filter):
    """A yes/no filter: only `true` narrows the list (by `method`); `false` lists everything, as before."""

    field_class = FlagField


class ProjectFilterSet(StrictFilterSet):
    q = django_filters.CharFilter(
        field_name="name", lookup_expr="icontains", label="Search projects", help_text="Name contains."
    )


class APITokenFilterSet(StrictFilterSet):
    """Your tokens have no filters; the list still refuses a parameter it does not know."""


class AuditEntryFilterSet(StrictFilterSet):
    project = ProjectFilter()
    action = django_filters.CharFilter(
        lookup_expr="startswith", label="Action starts with…", help_text="Action starts with (`deployment.`)."
    )
    object_type = django_filters.CharFilter(help_text="Type of the object acted on (`deployment`).")
    object_id = django_filters.CharFilter(help_text="Id of the object acted on.")
