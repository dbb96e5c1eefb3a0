from __future__ import annotations

from django.http import HttpRequest

from apps.core.navigation import navigation_items


def navigation(request: HttpRequest) -> dict[str, object]:
    return {"nav_items": navigation_items(request)}
