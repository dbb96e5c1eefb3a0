"""The navigation bar. Each app adds its entry here, so the bar reaches every app."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from django.urls import reverse


@dataclass(frozen=True)
class NavItem:
    label: str
    url_name: str
    icon: str
    section: str

    @property
    def url(self) -> str:
        return reverse(self.url_name)


NAV_ITEMS = [
    NavItem("Projects", "core:project-list", "bi-folder2", "core"),
    NavItem("Datasets", "datasets:dataset-list", "bi-table", "datasets"),
    NavItem("Experiments", "experiments:experiment-list", "bi-clipboard-data", "experiments"),
    NavItem("Pipelines", "experiments:pipeline-list", "bi-diagram-3", "experiments"),
]


def navigation_items(request: HttpRequest) -> list[dict[str, object]]:
    path = request.path
    return [
        {"label": item.label, "url": item.url, "icon": item.icon, "active": path.startswith(item.url)}
        for item in NAV_ITEMS
    ]
