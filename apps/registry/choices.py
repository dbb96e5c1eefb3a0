from __future__ import annotations

from django.db import models


class ModelFlavor(models.TextChoices):
    """How a model version's bundle is serialised (see serving/bundle.py)."""

    SKLEARN = "sklearn", "scikit-learn"
    XGBOOST = "xgboost", "XGBoost"
    PYTORCH = "pytorch", "PyTorch"
    CUSTOM = "custom", "Custom (pickle)"


class ModelVersionStage(models.TextChoices):
    NONE = "none", "None"
    STAGING = "staging", "Staging"
    PRODUCTION = "production", "Production"
    ARCHIVED = "archived", "Archived"

    @classmethod
    def colour(cls, stage: str) -> str:
        return {"none": "light", "staging": "info", "production": "success", "archived": "secondary"}[stage]


class ModelVersionSource(models.TextChoices):
    """Where a version came from: a pipeline's register stage, a finished run, or an uploaded file."""

    PIPELINE = "pipeline", "Pipeline"
    RUN = "run", "Run"
    UPLOAD = "upload", "Upload"


class PromotionRequestStatus(models.TextChoices):
    OPEN = "open", "Open"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"
    EXPIRED = "expired", "Expired"

    @classmethod
    def colour(cls, status: str) -> str:
        return {
            "open": "warning",
            "approved": "success",
            "rejected": "danger",
            "withdrawn": "secondary",
            "expired": "dark",
        }[status]


class PromotionDecision(models.TextChoices):
    APPROVE = "approve", "Approve"
    REJECT = "reject", "Reject"


class GateCheckStatus(models.TextChoices):
    """The outcome of one gate check; only `fail` blocks an approval (unless an owner overrides it)."""

    PASS = "pass", "Pass"
    WARN = "warn", "Warning"
    FAIL = "fail", "Fail"
    SKIP = "skip", "Not applicable"

    @classmethod
    def colour(cls, status: str) -> str:
        return {"pass": "success", "warn": "warning", "fail": "danger", "skip": "secondary"}[status]


class RegistryEventType(models.TextChoices):
    VERSION_REGISTERED = "version.registered", "Version registered"
    REQUEST_CREATED = "request.created", "Promotion requested"
    REQUEST_APPROVED = "request.approved", "Promotion approved"
    REQUEST_REJECTED = "request.rejected", "Promotion rejected"
    REQUEST_WITHDRAWN = "request.withdrawn", "Promotion withdrawn"
    REQUEST_EXPIRED = "request.expired", "Promotion expired"
    STAGE_CHANGED = "stage.changed", "Stage changed"
    ALIAS_CHANGED = "alias.changed", "Alias changed"

    @classmethod
    def icon(cls, kind: str) -> str:
        return {
            "version.registered": "bi-box-seam",
            "request.created": "bi-send",
            "request.approved": "bi-check2-circle",
            "request.rejected": "bi-x-circle",
            "request.withdrawn": "bi-arrow-counterclockwise",
            "request.expired": "bi-hourglass-bottom",
            "stage.changed": "bi-signpost-split",
            "alias.changed": "bi-tag",
        }[kind]


class WebhookKind(models.TextChoices):
    """What a webhook subscription posts to; each value names a channel of apps/core/notifications."""

    WEBHOOK = "webhook", "Webhook (signed JSON)"
    SLACK = "slack", "Slack (incoming webhook)"
