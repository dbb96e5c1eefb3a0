"""The filters of the datasets list, shared by the page and the API (strict: see apps/core/filters.py)."""

from __future__ import annotations

import django_filters

from apps.core.filters import ProjectFilter, StrictFilterSet, name_search

SEARCH_HELP = "Name or description contains this (case and Unicode form do not matter)."


class DatasetFilterSet(StrictFilterSet):
    project = ProjectFilter()
    q = django_filters.CharFilter(method=name_search, label="Search datasets", help_text=SEARCH_HELP)
    search = django_filters.CharFilter(method=name_search, help_text="The same as `q`.")
