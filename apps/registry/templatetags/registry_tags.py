from __future__ import annotations

from typing import Any

import markdown as markdown_lib
import nh3
from django import template
from django.utils.safestring import SafeString, mark_safe

from apps.registry.choices import GateCheckStatus, ModelVersionStage, PromotionRequestStatus

register = template.Library()
# Tags a description may keep after rendering; everything else (scripts, styles, event handlers) is removed.
ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "li",
    "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip


@register.filter
def markdown(text: str) -> SafeString:
    """Markdown rendered to HTML and sanitised with nh3, so a description cannot inject script."""
    html = markdown_lib.markdown(text or "", extensions=["fenced_code", "tables", "sane_lists"])
    return mark_safe(nh3.clean(html, tags=ALLOWED_TAGS, link_rel="noopener noreferrer nofollow"))  # noqa: S308 (sanitised)


@register.filter
def stage_colour(stage: str) -> str:
    return ModelVersionStage.colour(stage) if stage in ModelVersionStage.values else "light"


@register.filter
def gate_colour(status: str) -> str:
    return GateCheckStatus.colour(status) if status in GateCheckStatus.values else "secondary"


@register.filter
def request_colour(status: str) -> str:
    return PromotionRequestStatus.colour(status)


@register.filter
def metric(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}"


@register.filter
def filesize_mb(value: int) -> str:
    return f"{(value or 0) / 1024 / 1024:.2f} MB"
