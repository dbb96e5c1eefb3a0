"""The registry's data: registered models, their versions, aliases, promotion requests and registry events.

The invariants the database enforces itself: version numbers and semantic labels are unique per model, at
most one version per model is in production, an alias name is unique per model, and at most one request
for the same transition of the same version is open.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from apps.core.models import Project
from apps.core.notifications.channels import TRANSPORTS
from apps.registry.choices import (
    GateCheckStatus,
    ModelFlavor,
    ModelVersionSource,
    ModelVersionStage,
    PromotionDecision,
    PromotionRequestStatus,
    RegistryEventType,
    WebhookKind,
)

ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
LABEL_PATTERN = r"^v?\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$"


class RegisteredModelQuerySet(models.QuerySet):
    def for_user(self, user: object) -> RegisteredModelQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class RegisteredModel(models.Model):
    """A named model in a project; its versions are numbered 1, 2, 3… in registration order."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="registered_models")
    name = models.CharField(max_length=100)
    name_key = models.CharField(max_length=100, editable=False, help_text="The name as compared.")
    description = models.TextField(blank=True, help_text="Markdown.")
    tags = models.JSONField(default=dict, blank=True)
    last_version_number = models.PositiveIntegerField(
        default=0, editable=False, help_text="The highest number handed out; allocated under a row lock."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RegisteredModelQuerySet.as_manager()

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name_key"], name="registry_model_name_unique_in_project")
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("registry:model-detail", args=[self.pk])


class ModelVersionQuerySet(models.QuerySet):
    def for_user(self, user: object) -> ModelVersionQuerySet:
        return self.filter(model__project__in=Project.objects.for_user(user))


class ModelVersion(models.Model):
    """One registered artifact of a model: the bundle zip (by sha256), its signature, results and lineage."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    label = models.CharField(max_length=64, blank=True, help_text="An optional semantic label such as v1.0.0.")
    sha256 = models.CharField(max_length=64, help_text="The bundle zip's hash; it is stored under it.")
    size_bytes = models.BigIntegerField(default=0)
    flavor = models.CharField(max_length=16, choices=ModelFlavor.choices)
    task = models.CharField(max_length=16, help_text="classification or regression.")
    signature = models.JSONField(help_text="Input columns with types; output classes or value.")
    input_example = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    params = models.JSONField(default=dict, blank=True)
    validation = models.JSONField(
        default=dict, blank=True, help_text="Thresholds, whether they passed, and the failures."
    )
    validation_passed = models.BooleanField(null=True, blank=True, help_text="Empty when no thresholds were set.")
    source = models.CharField(max_length=16, choices=ModelVersionSource.choices)
    run = models.ForeignKey(
        "experiments.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    pipeline_run = models.ForeignKey(
        "experiments.PipelineRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    dataset_version = models.ForeignKey(
        "datasets.DatasetVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    dataset_split = models.ForeignKey(
        "datasets.DatasetSplit", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    code_version = models.CharField(max_length=100, blank=True, help_text="A commit hash or release tag.")
    tags = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True, help_text="Markdown.")
    stage = models.CharField(
        max_length=16, choices=ModelVersionStage.choices, default=ModelVersionStage.NONE, db_index=True
    )
    stage_changed_at = models.DateTimeField(null=True, blank=True)
    integrity_error = models.TextField(
        blank=True, help_text="Set when the stored artifact failed verification; cleared by a good load."
    )
    integrity_checked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["model", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="registry_version_number_unique"),
            models.UniqueConstraint(
                fields=["model", "label"], condition=~Q(label=""), name="registry_version_label_unique"
            ),
            models.UniqueConstraint(
                fields=["model"], condition=Q(stage="production"), name="registry_one_production_version"
            ),
            models.CheckConstraint(
                condition=Q(stage__in=ModelVersionStage.values), name="registry_version_stage_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    def get_absolute_url(self) -> str:
        return reverse("registry:version-detail", args=[self.model_id, self.number])

    @property
    def display_name(self) -> str:
        return f"version {self.number}" + (f" ({self.label})" if self.label else "")

    @property
    def stage_colour(self) -> str:
        return ModelVersionStage.colour(self.stage)

    @property
    def classes(self) -> list | None:
        outputs = (self.signature or {}).get("outputs") or {}
        return outputs.get("classes")


class ModelAlias(models.Model):
    """A movable name (champion, challenger, …) that points at one version of a model."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=40)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="aliases")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "name"]
        constraints = [
            models.UniqueConstraint(fields=["model", "name"], name="registry_alias_unique_in_model"),
            models.CheckConstraint(condition=Q(name__regex=ALIAS_PATTERN), name="registry_alias_name_valid"),
        ]
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"


class PromotionRequestQuerySet(models.QuerySet):
    def for_user(self, user: object) -> PromotionRequestQuerySet:
        return self.filter(model__project__in=Project.objects.for_user(user))

    def open(self) -> PromotionRequestQuerySet:
        return self.filter(status=PromotionRequestStatus.OPEN)


class PromotionRequest(models.Model):
    """A request to move a version to a stage or an alias to a version; approvers other than the requester decide."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="promotion_requests")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="promotion_requests")
    target_stage = models.CharField(max_length=16, choices=ModelVersionStage.choices, blank=True)
    target_alias = models.CharField(max_length=40, blank=True)
    transition = models.CharField(
        max_length=64, editable=False, help_text="stage:<stage> or alias:<name>; one open request per transition."
    )
    comment = models.TextField(blank=True)
    status = models.CharField(
        max_length=16, choices=PromotionRequestStatus.choices, default=PromotionRequestStatus.OPEN, db_index=True
    )
    required_approvals = models.PositiveSmallIntegerField(default=1)
    gate_checks = models.JSONField(default=list, blank=True, help_text="The gate checks when the request was made.")
    decision_gate_checks = models.JSONField(
        default=list, blank=True, help_text="The gate checks at the last approval or rejection."
    )
    override_reason = models.TextField(blank=True, help_text="An owner's reason for approving despite failed gates.")
    overridden_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    previous_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The version the stage or alias moved away from, once approved.",
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="promotion_requests"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decision_comment = models.TextField(blank=True)

    objects = PromotionRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "transition"],
                condition=Q(status="open"),
                name="registry_one_open_request_per_transition",
            ),
            models.CheckConstraint(
                condition=(Q(target_stage="") & ~Q(target_alias="")) | (~Q(target_stage="") & Q(target_alias="")),
                name="registry_request_one_target",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.version} → {self.target_display}"

    def get_absolute_url(self) -> str:
        return reverse("registry:request-detail", args=[self.pk])

    @property
    def target_display(self) -> str:
        return self.target_stage if self.target_stage else f"@{self.target_alias}"

    @property
    def is_open(self) -> bool:
        return self.status == PromotionRequestStatus.OPEN

    @property
    def status_colour(self) -> str:
        return PromotionRequestStatus.colour(self.status)

    @property
    def failed_gates(self) -> list[dict]:
        checks = self.decision_gate_checks or self.gate_checks
        return [check for check in checks if check.get("status") == GateCheckStatus.FAIL]


class PromotionApproval(models.Model):
    """One approver's decision on a request; a request needs `required_approvals` distinct approvals."""

    request = models.ForeignKey(PromotionRequest, on_delete=models.CASCADE, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    decision = models.CharField(max_length=8, choices=PromotionDecision.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["request", "approver"], name="registry_one_decision_per_approver")
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.decision}s #{self.request_id}"


class RegistryEvent(models.Model):
    """Something that happened in the registry; delivered after commit to every registered event handler."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="registry_events")
    model = models.ForeignKey(RegisteredModel, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    request = models.ForeignKey(
        PromotionRequest, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    type = models.CharField(max_length=32, choices=RegistryEventType.choices, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A worker runs the handlers until then; after that the sweep may."
    )
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="When the handlers had all run.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.type} #{self.pk}"

    @property
    def icon(self) -> str:
        return RegistryEventType.icon(self.type)

    @property
    def summary(self) -> str:
        return str(self.payload.get("summary") or self.get_type_display())


class Notification(models.Model):
    """An in-app notification: one row per recipient of a registry event."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    event = models.ForeignKey(RegistryEvent, on_delete=models.CASCADE, related_name="notifications")
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["user", "event"], name="registry_one_notification_per_event")]
        indexes = [models.Index(fields=["user", "read_at"], name="registry_notification_unread")]

    def __str__(self) -> str:
        return f"{self.event} for {self.user}"


def _webhook_secret() -> str:
    return secrets.token_urlsafe(32)


class Webhook(models.Model):
    """A subscription of an outgoing endpoint to the project's registry events: a signed JSON webhook, or a
    Slack incoming webhook (whose URL is itself the secret, so it is only ever shown masked)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    kind = models.CharField(max_length=16, choices=WebhookKind.choices, default=WebhookKind.WEBHOOK)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=100, default=_webhook_secret, help_text="The HMAC-SHA256 key (webhooks).")
    event_types = models.JSONField(default=list, blank=True, help_text="Event types to send; empty means all.")
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project__name", "url"]

    def __str__(self) -> str:
        return self.shown_url

    def wants(self, event_type: str) -> bool:
        return self.is_active and (not self.event_types or event_type in self.event_types)

    @property
    def target(self) -> dict[str, str]:
        """Where the notification outbox sends to (holds the secrets)."""
        if self.kind == WebhookKind.SLACK:
            return {"url": self.url}
        return {"url": self.url, "secret": self.secret}

    @property
    def shown_url(self) -> str:
        """The URL as the UI, the API and the admin show it: a Slack URL masked."""
        return TRANSPORTS[self.kind].shown(self.target)

    @property
    def source(self) -> str:
        """How the outbox's deliveries name this subscription."""
        return f"registry.webhook:{self.pk}"
