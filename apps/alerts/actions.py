"""The closed loop: a firing rule starts a retraining pipeline from a pipeline run's config; the pipeline's
run carries the alert in its tags (the registered version's lineage shows them), and when the rule asks, the
version the pipeline registers gets a promotion request to production (see `promotion_on_registered`)."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction

from apps.alerts.models import Alert, AlertAction, AlertRule
from apps.core.exceptions import DomainError
from apps.experiments.models import Run
from apps.experiments.services import pipeline_run_create
from apps.registry.choices import ModelVersionStage, RegistryEventType
from apps.registry.models import RegistryEvent
from apps.registry.services import promotion_request_create

logger = logging.getLogger(__name__)


def retrain_start(*, rule: AlertRule, alert: Alert) -> AlertAction:
    """In the evaluation's transaction (a savepoint, so a refused config is recorded, not raised)."""
    template = rule.retrain_from
    try:
        with transaction.atomic():
            pipeline_run = pipeline_run_create(project=rule.project, actor=None, config_text=template.config_text)
            run = Run.objects.get(pk=pipeline_run.run_id)
            Run.objects.filter(pk=run.pk).update(
                tags={
                    **run.tags,
                    "alert_rule": str(rule.pk),
                    "alert": str(alert.pk),
                    "alert_deployment": alert.deployment.name,
                    "alert_value": "" if alert.value is None else f"{alert.value:.6g}",
                }
            )
    except (DomainError, DjangoValidationError, ValueError) as exc:
        logger.warning("alert rule %s: retraining could not start: %s", rule.pk, exc)
        return AlertAction.objects.create(rule=rule, alert=alert, error=str(exc)[:2000])
    return AlertAction.objects.create(rule=rule, alert=alert, pipeline_run=pipeline_run)


def promotion_on_registered(event: RegistryEvent) -> None:
    """Registry event handler: a version registered by a pipeline an alert started gets a promotion request to
    production when its rule asks, requested in the name of the rule's author (who set the rule up to do so);
    a human approver still decides. Idempotent: an action that has its request is left alone."""
    if event.type != RegistryEventType.VERSION_REGISTERED or event.version_id is None:
        return
    version = event.version
    if version.pipeline_run_id is None:
        return
    action = (
        AlertAction.objects.select_related("rule__created_by")
        .filter(pipeline_run_id=version.pipeline_run_id, promotion_request__isnull=True)
        .first()
    )
    if action is None or not action.rule.retrain_open_promotion:
        return
    rule = action.rule
    try:
        if rule.created_by is None:
            raise DomainError("the rule's author no longer exists; nobody can request the promotion")
        request = promotion_request_create(
            version=version,
            actor=rule.created_by,
            target_stage=ModelVersionStage.PRODUCTION,
            comment=f"Retrained because alert rule {rule.name!r} fired (alert #{action.alert_id}).",
        )
    except (DomainError, DjangoValidationError) as exc:
        AlertAction.objects.filter(pk=action.pk).update(error=f"promotion request: {exc}"[:2000])
        return
    AlertAction.objects.filter(pk=action.pk).update(promotion_request=request)
