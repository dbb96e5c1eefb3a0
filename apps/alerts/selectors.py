"""Reads of alerts for the pages, the API and the command."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q, QuerySet

from apps.alerts import figures
from apps.alerts.models import Alert, AlertAction, AlertChannel, AlertNotification, AlertRule, AlertTransition, Silence
from apps.core.notifications.models import Delivery
from apps.deployments.models import Deployment

# The editor's preview: the figure at this many points over the last 24 h.
PREVIEW_POINTS = 48
PREVIEW_SPAN = timedelta(hours=24)


def alert_rules(*, user: object) -> QuerySet[AlertRule]:
    return (
        AlertRule.objects.for_user(user)
        .select_related("project", "deployment", "registered_model")
        .annotate(
            n_firing=Count("alerts", filter=Q(alerts__state="firing")),
            n_pending=Count("alerts", filter=Q(alerts__state="pending")),
            n_nodata=Count("alerts", filter=Q(alerts__state__in=["nodata", "error"])),
            n_alerts=Count("alerts"),
        )
        .order_by("project__name", "name", "pk")
    )


def alert_channels(*, user: object) -> QuerySet[AlertChannel]:
    return AlertChannel.objects.for_user(user).select_related("project")


def silences(*, user: object) -> QuerySet[Silence]:
    return Silence.objects.for_user(user).select_related("project", "rule", "deployment", "created_by")


def alert_transitions(*, user: object) -> QuerySet[AlertTransition]:
    return AlertTransition.objects.for_user(user).select_related("alert__rule", "alert__deployment")


def alerts(*, user: object) -> QuerySet[Alert]:
    return Alert.objects.for_user(user).select_related("rule", "deployment")


def notification_deliveries(notifications: list[AlertNotification]) -> dict[int, list[Delivery]]:
    """The outbox rows of each notification (by its `source`), with their attempts; two queries."""
    by_source = {notification.source: notification.pk for notification in notifications}
    rows: dict[int, list[Delivery]] = {notification.pk: [] for notification in notifications}
    for delivery in Delivery.objects.filter(source__in=list(by_source)).prefetch_related("attempt_log"):
        rows[by_source[delivery.source]].append(delivery)
    return rows


def rule_actions(rule: AlertRule) -> QuerySet[AlertAction]:
    return rule.actions.select_related("pipeline_run", "promotion_request", "abtest", "alert__deployment")


def figure_preview(
    *, figure: str, column: str, deployment: Deployment, window: timedelta, now: datetime
) -> list[dict[str, Any]]:
    """The figure as the rule would have seen it at PREVIEW_POINTS moments of the last 24 h (rollups only, and
    the latest drift report of each moment's window); accuracy figures are skipped (they read raw rows)."""
    step = PREVIEW_SPAN / PREVIEW_POINTS
    points = []
    for index in range(PREVIEW_POINTS + 1):
        moment = now - PREVIEW_SPAN + step * index
        cache = figures.FigureCache(now=moment)
        observation = figures.observe(figure=figure, column=column, deployment=deployment, window=window, cache=cache)
        points.append({"at": moment, "value": observation.value, "reason": observation.reason})
    return points
