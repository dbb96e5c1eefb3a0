"""Alerts: rules over monitoring figures, their alerts (one per rule and deployment) with every transition,
silences, the channels they notify, the notifications sent, and the retraining runs they started."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from apps.alerts.choices import AlertComparator, AlertFigure, AlertNotificationKind, AlertSeverity, AlertState
from apps.core.models import Project
from apps.core.notifications.channels import TRANSPORTS
from apps.core.notifications.choices import NotificationChannel

DEFAULT_REPEAT_INTERVAL_SECONDS = 4 * 3600
DEFAULT_RETRAIN_COOLDOWN_SECONDS = 24 * 3600


class ProjectScopedQuerySet(models.QuerySet):
    project_path = "project"

    def for_user(self, user: object) -> models.QuerySet:
        return self.filter(**{f"{self.project_path}__in": Project.objects.for_user(user)})


class AlertChannel(models.Model):
    """Where a rule's notifications go: email addresses, a Slack incoming webhook, or a signed JSON webhook.

    `config` holds the secrets (the Slack URL, the webhook's HMAC key); pages and the API show `shown`."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="alert_channels")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=NotificationChannel.choices)
    config = models.JSONField(help_text="email: {addresses}; slack: {url}; webhook: {url, secret}.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProjectScopedQuerySet.as_manager()

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="alerts_channel_name_unique")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("alerts:channel-detail", args=[self.pk])

    def targets(self) -> list[dict[str, Any]]:
        """What the outbox sends to: one target per address (email), else the one URL."""
        if self.kind == NotificationChannel.EMAIL:
            return [{"to": address} for address in self.config.get("addresses", [])]
        if self.kind == NotificationChannel.SLACK:
            return [{"url": self.config["url"]}]
        return [{"url": self.config["url"], "secret": self.config["secret"]}]

    @property
    def shown(self) -> str:
        return ", ".join(TRANSPORTS[self.kind].shown(target) for target in self.targets())


class AlertRuleQuerySet(ProjectScopedQuerySet):
    pass


class AlertRule(models.Model):
    """A condition on one figure of a deployment (or of every deployment of a registered model)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="alert_rules")
    name = models.CharField(max_length=100)
    deployment = models.ForeignKey(
        "deployments.Deployment", null=True, blank=True, on_delete=models.CASCADE, related_name="alert_rules"
    )
    registered_model = models.ForeignKey(
        "registry.RegisteredModel",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alert_rules",
        help_text="Every deployment of this model (instead of one deployment).",
    )
    figure = models.CharField(max_length=32, choices=AlertFigure.choices)
    column = models.CharField(max_length=200, blank=True, help_text="The column, for a column's drift statistic.")
    comparator = models.CharField(max_length=2, choices=AlertComparator.choices)
    threshold = models.FloatField()
    threshold_from_validation = models.BooleanField(
        default=False,
        help_text="The threshold is added to the live version's registered validation value of the figure.",
    )
    window_seconds = models.PositiveIntegerField(default=300)
    for_seconds = models.PositiveIntegerField(default=0, help_text="Pending this long before firing.")
    keep_firing_for_seconds = models.PositiveIntegerField(default=0)
    repeat_interval_seconds = models.PositiveIntegerField(default=DEFAULT_REPEAT_INTERVAL_SECONDS)
    send_resolved = models.BooleanField(default=True)
    severity = models.CharField(max_length=16, choices=AlertSeverity.choices, default=AlertSeverity.WARNING)
    labels = models.JSONField(default=dict, blank=True)
    runbook_url = models.URLField(max_length=500, blank=True)
    channels = models.ManyToManyField(AlertChannel, blank=True, related_name="rules")
    enabled = models.BooleanField(default=True)
    # Evaluation: claimed by one worker at a time (see services.alert_rules_evaluate_due).
    next_evaluation_at = models.DateTimeField(default=timezone.now, db_index=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    # The group (the rule's alerts): what was last said about it, so it is said once, then every repeat interval.
    group_notified_at = models.DateTimeField(null=True, blank=True)
    group_firing = models.JSONField(default=list, blank=True, help_text="Alert ids the last notification named.")
    # The closed loop: retrain from a pipeline run's config when the rule fires.
    retrain_from = models.ForeignKey(
        "experiments.PipelineRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Start a pipeline with this run's config when the rule fires.",
    )
    retrain_cooldown_seconds = models.PositiveIntegerField(default=DEFAULT_RETRAIN_COOLDOWN_SECONDS)
    retrain_open_promotion = models.BooleanField(
        default=False, help_text="Open a promotion request to production for the version the pipeline registers."
    )
    retrain_abtest_percent = models.PositiveSmallIntegerField(
        default=0,
        help_text="0: none; 1-99: start an A/B test on the deployment giving the version the pipeline registers "
        "this share of the traffic, against the version serving.",
    )
    last_retrain_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AlertRuleQuerySet.as_manager()

    class Meta:
        ordering = ["project__name", "name", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(deployment__isnull=False, registered_model__isnull=True)
                | Q(deployment__isnull=True, registered_model__isnull=False),
                name="alerts_rule_one_target",
            ),
            models.UniqueConstraint(fields=["project", "name"], name="alerts_rule_name_unique"),
        ]
        indexes = [models.Index(fields=["enabled", "next_evaluation_at"], name="alerts_rule_due")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("alerts:rule-detail", args=[self.pk])

    @property
    def target_display(self) -> str:
        if self.deployment_id:
            return f"deployment {self.deployment}"
        return f"every deployment of {self.registered_model}"

    @property
    def condition_display(self) -> str:
        base = "validation value " + (f"{self.threshold:+g}" if self.threshold else "")
        threshold = base if self.threshold_from_validation else f"{self.threshold:g}"
        column = f"[{self.column}]" if self.column else ""
        return f"{self.get_figure_display()}{column} {self.get_comparator_display()} {threshold}"

    @property
    def severity_colour(self) -> str:
        return AlertSeverity.colour(self.severity)


class AlertQuerySet(ProjectScopedQuerySet):
    project_path = "rule__project"


class Alert(models.Model):
    """One rule on one deployment: its current state and the figure value of the last evaluation."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="alerts")
    state = models.CharField(max_length=16, choices=AlertState.choices, default=AlertState.INACTIVE, db_index=True)
    value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True, help_text="The threshold used (after validation offset).")
    reason = models.TextField(blank=True)
    active_since = models.DateTimeField(null=True, blank=True)
    firing_since = models.DateTimeField(null=True, blank=True)
    last_true_at = models.DateTimeField(null=True, blank=True)
    state_changed_at = models.DateTimeField(default=timezone.now)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    silenced = models.BooleanField(default=False, help_text="A silence matched it at the last evaluation.")
    figure_state = models.JSONField(
        default=dict, blank=True, help_text="What the figure keeps between evaluations (event drops: counter readings)."
    )

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["rule", "deployment"]
        constraints = [models.UniqueConstraint(fields=["rule", "deployment"], name="alerts_one_alert_per_target")]

    def __str__(self) -> str:
        return f"{self.rule} on {self.deployment}"

    @property
    def state_colour(self) -> str:
        return AlertState.colour(self.state)


class AlertTransitionQuerySet(ProjectScopedQuerySet):
    project_path = "alert__rule__project"


class AlertTransition(models.Model):
    """One change of an alert's state, with the value that caused it and when."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=16, choices=AlertState.choices)
    to_state = models.CharField(max_length=16, choices=AlertState.choices)
    value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    reason = models.TextField(blank=True)
    silenced = models.BooleanField(default=False)
    at = models.DateTimeField(default=timezone.now)

    objects = AlertTransitionQuerySet.as_manager()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["alert", "at"], name="alerts_transition_alert_at")]

    def __str__(self) -> str:
        return f"{self.alert}: {self.from_state} → {self.to_state}"

    @property
    def to_colour(self) -> str:
        return AlertState.colour(self.to_state)


class Silence(models.Model):
    """Mutes notifications (not states) of the alerts it matches between `starts_at` and `ends_at`.

    It matches an alert when every given criterion does: the rule, the deployment, and each label matcher
    (`{"team": "ml"}` matches a rule whose labels hold team=ml)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="alert_silences")
    rule = models.ForeignKey(AlertRule, null=True, blank=True, on_delete=models.CASCADE, related_name="silences")
    deployment = models.ForeignKey(
        "deployments.Deployment", null=True, blank=True, on_delete=models.CASCADE, related_name="alert_silences"
    )
    matchers = models.JSONField(default=dict, blank=True, help_text="Label name -> value; all must match.")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    comment = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ProjectScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-ends_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(starts_at__lt=models.F("ends_at")), name="alerts_silence_order"),
        ]

    def __str__(self) -> str:
        return f"silence #{self.pk} until {self.ends_at:%Y-%m-%d %H:%M}"

    def matches(self, rule: AlertRule, deployment_id: int, now: Any) -> bool:
        if not (self.starts_at <= now < self.ends_at):
            return False
        if self.rule_id is not None and self.rule_id != rule.pk:
            return False
        if self.deployment_id is not None and self.deployment_id != deployment_id:
            return False
        return all(str(rule.labels.get(name)) == str(value) for name, value in self.matchers.items())

    @property
    def is_active(self) -> bool:
        return self.starts_at <= timezone.now() < self.ends_at


class AlertNotification(models.Model):
    """One message about a rule's group (firing, reminder, resolved, or a channel's test), sent to each target
    of each channel through the outbox; `key` goes in every payload so a receiver can drop a duplicate."""

    rule = models.ForeignKey(AlertRule, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications")
    channel = models.ForeignKey(AlertChannel, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=AlertNotificationKind.choices)
    key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    alerts = models.JSONField(default=list, help_text="The alerts it named: id, deployment, state, value.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} of {self.rule or self.channel}"

    @property
    def source(self) -> str:
        return f"alerts.notification:{self.pk}"


class OwnerNotice(models.Model):
    """An in-app notice to a project owner: an alert's delivery finally failed after every retry."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_notices")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    delivery = models.ForeignKey("core.Delivery", on_delete=models.CASCADE, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["user", "delivery"], name="alerts_one_notice_per_delivery")]

    def __str__(self) -> str:
        return self.text[:60]


class AlertAction(models.Model):
    """A retraining pipeline a firing rule started, and the promotion request and A/B test it opened."""

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="actions")
    alert = models.ForeignKey(Alert, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    pipeline_run = models.ForeignKey(
        "experiments.PipelineRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    promotion_request = models.ForeignKey(
        "registry.PromotionRequest", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    abtest = models.ForeignKey("abtests.ABTest", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"retraining by {self.rule}"
