"""Alerts as notifications: a rule's group becomes one `Message`, queued through the core outbox to every target
of the rule's channels in the transaction that changed the alerts' states; and a delivery that finally fails
becomes an in-app notice to the project's owners."""

from __future__ import annotations

from django.conf import settings

from apps.alerts.choices import AlertNotificationKind
from apps.alerts.models import Alert, AlertChannel, AlertNotification, AlertRule, OwnerNotice
from apps.core.choices import ProjectRole
from apps.core.models import Membership
from apps.core.notifications.message import Message
from apps.core.notifications.models import Delivery
from apps.core.notifications.services import notification_enqueue

SOURCE_PREFIX = "alerts.notification:"


def _value(value: float | None) -> str:
    return "no value" if value is None else f"{value:.4g}"


def _alert_document(alert: Alert) -> dict:
    return {
        "id": alert.pk,
        "deployment": alert.deployment.name,
        "deployment_id": alert.deployment_id,
        "state": alert.state,
        "value": alert.value,
        "threshold": alert.threshold,
        "since": (alert.firing_since or alert.state_changed_at).isoformat(),
        "silenced": alert.silenced,
    }


def rule_message(rule: AlertRule, kind: str, alerts: list[Alert], notification: AlertNotification) -> Message:
    status = "RESOLVED" if kind == AlertNotificationKind.RESOLVED else "FIRING"
    count = f":{len(alerts)}" if status == "FIRING" else ""
    subject = f"[{status}{count}] {rule.name} ({rule.project.name})"
    reminder = " (still firing)" if kind == AlertNotificationKind.REPEAT else ""
    text = f"{rule.condition_display} on {rule.target_display}{reminder}."
    fields: list[tuple[str, str]] = [("Severity", rule.get_severity_display())]
    fields += [
        (f"Deployment {alert.deployment.name}", f"{_value(alert.value)} ({alert.get_state_display()})")
        for alert in alerts
    ]
    if rule.labels:
        fields.append(("Labels", ", ".join(f"{key}={value}" for key, value in sorted(rule.labels.items()))))
    if rule.runbook_url:
        fields.append(("Runbook", rule.runbook_url))
    return Message(
        subject=subject,
        text=text,
        fields=tuple(fields),
        link=settings.CONSOLE_BASE_URL + rule.get_absolute_url(),
        kind=f"alert.{kind}",
        data={
            "idempotency_key": str(notification.key),
            "status": status.lower(),
            "project": rule.project.slug,
            "rule": {
                "id": rule.pk,
                "name": rule.name,
                "figure": rule.figure,
                "comparator": rule.comparator,
                "threshold": rule.threshold,
                "severity": rule.severity,
                "labels": rule.labels,
                "runbook_url": rule.runbook_url,
            },
            "alerts": [_alert_document(alert) for alert in alerts],
        },
    )


def _enqueue(channel: AlertChannel, message: Message, notification: AlertNotification) -> int:
    for target in channel.targets():
        notification_enqueue(channel=channel.kind, target=target, message=message, source=notification.source)
    return len(channel.targets())


def rule_notify(*, rule: AlertRule, kind: str, alerts: list[Alert]) -> AlertNotification:
    """Record the notification and queue one delivery per target of each of the rule's channels, in the
    caller's transaction (the one that changed the states)."""
    notification = AlertNotification.objects.create(
        rule=rule, kind=kind, alerts=[_alert_document(alert) for alert in alerts]
    )
    message = rule_message(rule, kind, alerts, notification)
    for channel in rule.channels.all():
        _enqueue(channel, message, notification)
    return notification


def channel_test_notify(*, channel: AlertChannel) -> AlertNotification:
    notification = AlertNotification.objects.create(channel=channel, kind=AlertNotificationKind.TEST)
    message = Message(
        subject=f"[TEST] Alert channel {channel.name} ({channel.project.name})",
        text="A test notification from the MLOps console: this channel receives alerts.",
        fields=(("Channel", channel.name), ("Project", channel.project.name)),
        link=settings.CONSOLE_BASE_URL + channel.get_absolute_url(),
        kind="alert.test",
        data={"idempotency_key": str(notification.key), "status": "test", "project": channel.project.slug},
    )
    _enqueue(channel, message, notification)
    return notification


def delivery_failed(delivery: Delivery) -> None:
    """Tell the project's owners in the console that an alert's delivery was given up."""
    notification_id = delivery.source.removeprefix(SOURCE_PREFIX)
    if not notification_id.isdigit():
        return
    notification = (
        AlertNotification.objects.select_related("rule__project", "channel__project")
        .filter(pk=int(notification_id))
        .first()
    )
    if notification is None:
        return
    project = notification.rule.project if notification.rule_id else notification.channel.project
    what = f"rule {notification.rule.name}" if notification.rule_id else f"channel {notification.channel.name}"
    text = (
        f"A {notification.get_kind_display().lower()} notification of {what} to {delivery.recipient} "
        f"could not be delivered after {delivery.attempts} attempts: {delivery.last_error}"
    )
    owners = Membership.objects.filter(project=project, role=ProjectRole.OWNER).values_list("user_id", flat=True)
    OwnerNotice.objects.bulk_create(
        [OwnerNotice(user_id=user_id, project=project, delivery=delivery, text=text[:2000]) for user_id in owners],
        ignore_conflicts=True,
    )
