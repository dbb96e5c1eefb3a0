"""Deployments: the desired state (versions, weights, replicas, strategy step) and what runs.

The truth is here, in the database: a reconciler makes the backend match `Deployment` + its
`DeploymentTarget` rows and writes back what it found (`observed`). `generation` grows with every change of
the desired state; writers send the generation they read, and a stale one is refused (optimistic locking).
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.core.validators import MaxValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse

from apps.core.models import Project
from apps.deployments.choices import (
    DeploymentBackendKind,
    DeploymentEnvironment,
    DeploymentEventKind,
    DeploymentStatus,
    DeploymentStrategy,
    RolloutPhase,
)
from worker.deployments.spec import NAME_MAX_LENGTH, NAME_PATTERN

INGEST_TOKEN_PREFIX = "mld_"


class DeploymentQuerySet(models.QuerySet):
    def for_user(self, user: object) -> DeploymentQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))

    def active(self) -> DeploymentQuerySet:
        return self.exclude(status=DeploymentStatus.STOPPED)


class Deployment(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(
        max_length=NAME_MAX_LENGTH,
        unique=True,
        validators=[
            RegexValidator(NAME_PATTERN, "Lower-case letters, digits and '-', starting with a letter or digit.")
        ],
        help_text="The model name in the server's URLs (/v2/models/<name>) and the Kubernetes object name.",
    )
    registered_model = models.ForeignKey(
        "registry.RegisteredModel", on_delete=models.PROTECT, related_name="deployments"
    )
    environment = models.CharField(
        max_length=16, choices=DeploymentEnvironment.choices, default=DeploymentEnvironment.STAGING
    )
    backend = models.CharField(
        max_length=16, choices=DeploymentBackendKind.choices, default=DeploymentBackendKind.LOCAL
    )
    strategy = models.CharField(
        max_length=16,
        choices=DeploymentStrategy.choices,
        default=DeploymentStrategy.DIRECT,
        help_text="The strategy of the current (or last) rollout.",
    )
    phase = models.CharField(max_length=16, choices=RolloutPhase.choices, default=RolloutPhase.DONE)
    strategy_state = models.JSONField(
        default=dict, blank=True, help_text="The rollout's progress: steps, step, analysis window, failures."
    )
    rollback_spec = models.JSONField(
        null=True, blank=True, help_text="The healthy desired state before the current rollout: traffic and shadow."
    )
    status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.PENDING, db_index=True
    )
    status_message = models.TextField(blank=True)
    replicas = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(100)])
    autoscale_min = models.PositiveSmallIntegerField(null=True, blank=True)
    autoscale_max = models.PositiveSmallIntegerField(null=True, blank=True)
    auto_deploy_on_approval = models.BooleanField(
        default=False, help_text="Roll out a version of the model with this deployment's strategy once approved."
    )
    ingest_token_salt = models.CharField(max_length=32, editable=False)
    ingest_token_hash = models.CharField(max_length=64, unique=True, editable=False)
    generation = models.PositiveIntegerField(default=1, help_text="Grows with every change of the desired state.")
    applied_generation = models.PositiveIntegerField(default=0)
    applied_spec = models.JSONField(null=True, blank=True, help_text="The last spec given to the backend.")
    observed = models.JSONField(default=dict, blank=True, help_text="What the backend reported last.")
    observed_at = models.DateTimeField(null=True, blank=True)
    reconcile_lease_until = models.DateTimeField(null=True, blank=True)
    last_scaled_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(autoscale_min__isnull=True, autoscale_max__isnull=True)
                | Q(autoscale_min__gte=1, autoscale_max__gte=models.F("autoscale_min")),
                name="deployments_autoscale_bounds",
            ),
            models.CheckConstraint(condition=Q(replicas__lte=100), name="deployments_replicas_at_most_100"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("deployments:deployment-detail", args=[self.pk])

    @property
    def status_colour(self) -> str:
        return DeploymentStatus.colour(self.status)

    def ingest_token(self) -> str:
        """The model servers' bearer token, derived from SECRET_KEY and a per-deployment salt; never stored."""
        digest = hmac.new(
            settings.SECRET_KEY.encode(), f"deployment-ingest:{self.ingest_token_salt}".encode(), hashlib.sha256
        ).hexdigest()
        return INGEST_TOKEN_PREFIX + digest

    @staticmethod
    def hash_token(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @property
    def autoscaled(self) -> bool:
        return self.autoscale_min is not None

    @property
    def url(self) -> str | None:
        """Where clients send predictions: the backend's balanced endpoint, else a ready replica's address.

        None while no replica is ready, so that nobody is handed an address that cannot answer.
        """
        observed = self.observed or {}
        ready = [r["url"] for r in observed.get("replicas", []) if r.get("health") == "ready"]
        if not ready:
            return None
        return observed.get("endpoint") or ready[0]

    @property
    def is_settled(self) -> bool:
        """Stopped with no model server left: nothing changes it any more until someone acts on it.

        A failed deployment is not settled: the reconciler retries it and it may recover."""
        return self.status == DeploymentStatus.STOPPED and not (self.observed or {}).get("replicas")


class DeploymentTarget(models.Model):
    """One model version in a deployment's desired state: a live version with a weight, or the shadow."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="targets")
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="deployment_targets"
    )
    weight = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    shadow = models.BooleanField(default=False)
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["deployment", "shadow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "model_version"], name="deployments_target_unique"),
            models.UniqueConstraint(fields=["deployment"], condition=Q(shadow=True), name="deployments_one_shadow"),
            models.CheckConstraint(condition=Q(weight__lte=100), name="deployments_target_weight_range"),
        ]

    def __str__(self) -> str:
        role = "shadow" if self.shadow else f"{self.weight}%"
        return f"{self.deployment.name} ({role})"

    def get_absolute_url(self) -> str:
        return self.deployment.get_absolute_url()


class DeploymentEvent(models.Model):
    """One transition of a deployment, with the numbers behind it (canary decisions, replicas, errors)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=DeploymentEventKind.choices)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    generation = models.PositiveIntegerField(default=0)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["deployment", "-created_at"], name="deployments_event_recent_idx")]

    def __str__(self) -> str:
        return f"{self.deployment.name}: {self.kind}"

    @property
    def colour(self) -> str:
        return DeploymentEventKind.colour(self.kind)
