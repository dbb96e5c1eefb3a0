"""The navigation bar. Each app adds its entry here, so the bar reaches every app."""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest
from django.urls import reverse
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class NavItem:
    label: str
    url_name: str
    icon: str
    section: str
    # Dotted path of `callable(user) -> int` shown as a badge when non-zero: one query, run on every page.
    # A path, not the callable, so that core imports no other app.
    badge: str = ""

    @property
    def url(self) -> str:
        return reverse(self.url_name)


NAV_ITEMS = [
    NavItem("Projects", "core:project-list", "bi-folder2", "core"),
    NavItem("Datasets", "datasets:dataset-list", "bi-table", "datasets"),
    NavItem("Experiments", "experiments:experiment-list", "bi-clipboard-data", "experiments"),
    NavItem("Pipelines", "experiments:pipeline-list", "bi-diagram-3", "experiments"),
    NavItem("Models", "registry:model-list", "bi-box-seam", "registry"),
    NavItem("Deployments", "deployments:deployment-list", "bi-rocket-takeoff", "deployments"),
    NavItem("Dashboards", "monitoring:dashboard-list", "bi-graph-up", "monitoring"),
    NavItem("Drift", "monitoring:report-list", "bi-activity", "monitoring"),
    NavItem("Health", "monitoring:health", "bi-heart-pulse", "monitoring"),
    NavItem("A/B tests", "abtests:abtest-list", "bi-signpost-split", "abtests"),
    NavItem("Alerts", "alerts:rule-list", "bi-exclamation-triangle", "alerts"),
    NavItem(
        "Approvals",
        "registry:approval-inbox",
        "bi-check2-square",
        "registry",
        "apps.registry.selectors.pending_approvals_badge",
    ),
    NavItem(
        "Notifications",
        "registry:notification-list",
        "bi-bell",
        "registry",
        "apps.registry.selectors.unread_notifications_badge",
    ),
]


def navigation_items(request: HttpRequest) -> list[dict[str, object]]:
    path = request.path
    user = getattr(request, "user", None)
    signed_in = getattr(user, "is_authenticated", False)
    return [
        {
            "label": item.label,
            "url": item.url,
            "icon": item.icon,
            "active": path.startswith(item.url),
            "badge": import_string(item.badge)(user) if item.badge and signed_in else 0,
        }
        for item in NAV_ITEMS
    ]
