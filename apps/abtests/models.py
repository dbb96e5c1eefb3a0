"""A/B tests of model versions on a deployment's live traffic: the test, its arms, business outcomes, readouts.

An `ABTest` names a deployment, its arms (`ABTestArm`, control at position 0, with the traffic weight each
takes), the primary metric, the guardrails and the plan (MDE, α, power, planned sample). Starting it sets the
deployment's split to the arms' weights in arm order, so the model server's sticky hash (serving.app
`TrafficSplit`) sends a key to the arm at the same position. `Outcome` rows are business outcomes posted
later by request id or assignment key; `ABTestReadout` rows are the readouts over time (the chart of the
cumulative lift reads them back).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from apps.abtests.choices import (
    DECISION_COLOURS,
    ABTestMetric,
    ABTestStatus,
    AssignmentKey,
    OutcomeKeyType,
)


class ABTestQuerySet(models.QuerySet):
    def for_user(self, user: object) -> ABTestQuerySet:
        from apps.core.models import Project

        return self.filter(deployment__project__in=Project.objects.for_user(user))


class ABTest(models.Model):
    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.PROTECT, related_name="abtests")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=ABTestStatus.choices, default=ABTestStatus.DRAFT, db_index=True)
    primary_metric = models.CharField(max_length=16, choices=ABTestMetric.choices)
    guardrails = models.JSONField(
        default=list, blank=True, help_text='[{"metric": "error_rate" | "p99_latency_ms", "margin": number}, ...]'
    )
    mde = models.FloatField(help_text="Minimum detectable effect: absolute, or relative when mde_relative.")
    mde_relative = models.BooleanField(default=False)
    alpha = models.FloatField(default=0.05)
    power = models.FloatField(default=0.8)
    baseline = models.FloatField(help_text="The control's expected rate or mean, for the power calculation.")
    baseline_sd = models.FloatField(null=True, blank=True, help_text="Standard deviation of a mean metric.")
    sequential = models.BooleanField(default=True, help_text="Sequential (mSPRT) analysis; else fixed horizon.")
    planned_sample_size = models.PositiveIntegerField(help_text="Units over all arms, from the power calculation.")
    planned_duration_days = models.FloatField(null=True, blank=True)
    assignment_key = models.CharField(max_length=8, choices=AssignmentKey.choices, default=AssignmentKey.HEADER)
    decision = models.CharField(max_length=32, blank=True)
    decision_reason = models.TextField(blank=True)
    winner = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    promotion_request = models.ForeignKey(
        "registry.PromotionRequest", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ABTestQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "A/B test"
        constraints = [
            models.UniqueConstraint(
                fields=["deployment"], condition=Q(status="running"), name="abtests_one_running_per_deployment"
            ),
            models.CheckConstraint(condition=Q(alpha__gt=0, alpha__lt=1), name="abtests_alpha_range"),
            models.CheckConstraint(condition=Q(power__gt=0, power__lt=1), name="abtests_power_range"),
            models.CheckConstraint(condition=Q(mde__gt=0), name="abtests_mde_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("abtests:abtest-detail", args=[self.pk])

    @property
    def status_colour(self) -> str:
        return ABTestStatus.colour(self.status)

    @property
    def decision_colour(self) -> str:
        return DECISION_COLOURS.get(self.decision, "secondary")

    @property
    def project(self) -> models.Model:
        return self.deployment.project


class ABTestArm(models.Model):
    """One arm: a model version and the percentage of traffic it takes; position 0 is the control."""

    abtest = models.ForeignKey(ABTest, on_delete=models.CASCADE, related_name="arms")
    model_version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="+")
    weight = models.PositiveSmallIntegerField()
    position = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["abtest", "position"]
        constraints = [
            models.UniqueConstraint(fields=["abtest", "model_version"], name="abtests_arm_version_unique"),
            models.UniqueConstraint(fields=["abtest", "position"], name="abtests_arm_position_unique"),
            models.CheckConstraint(condition=Q(weight__gte=1, weight__lte=99), name="abtests_arm_weight_range"),
        ]

    def __str__(self) -> str:
        return f"{self.abtest.name}: {self.name} ({self.weight}%)"

    @property
    def is_control(self) -> bool:
        return self.position == 0

    @property
    def name(self) -> str:
        return "control" if self.position == 0 else f"treatment {self.position}" if self.position > 1 else "treatment"


class Outcome(models.Model):
    """A business outcome of one unit (a request id or an assignment key), in the arm that served it.

    One per (test, key type, key): posting it again replaces the value (idempotent for the same value)."""

    abtest = models.ForeignKey(ABTest, on_delete=models.CASCADE, related_name="outcomes")
    key_type = models.CharField(max_length=16, choices=OutcomeKeyType.choices)
    key = models.CharField(max_length=200)
    model_version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="+")
    value = models.FloatField()
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["abtest", "key_type", "key"], name="abtests_outcome_unit_unique")
        ]
        indexes = [models.Index(fields=["abtest", "model_version"], name="abtests_outcome_arm_idx")]

    def __str__(self) -> str:
        return f"{self.key}: {self.value}"


class ABTestReadout(models.Model):
    """One readout of a test as of a moment: the engine's result (JSON) and the console's additions."""

    abtest = models.ForeignKey(ABTest, on_delete=models.CASCADE, related_name="readouts")
    as_of = models.DateTimeField()
    decision = models.CharField(max_length=32)
    reason = models.TextField(blank=True)
    srm_p_value = models.FloatField(null=True, blank=True)
    srm_invalid = models.BooleanField(default=False)
    result = models.JSONField()
    computed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-as_of", "-id"]
        indexes = [models.Index(fields=["abtest", "-as_of"], name="abtests_readout_recent_idx")]

    def __str__(self) -> str:
        return f"{self.abtest.name} @ {self.as_of:%Y-%m-%d %H:%M}: {self.decision}"

    @property
    def decision_colour(self) -> str:
        return DECISION_COLOURS.get(self.decision, "secondary")
