"""The closed loop: a firing rule starts a retraining pipeline from a pipeline run's config; the pipeline's
run carries the alert in its tags (the registered version's lineage shows them), and when the rule asks, the
version the pipeline registers gets a promotion request to production (see `promotion_on_registered`)."""

from __future__ import annotations

import logging

from django.db import transaction

from apps.alerts.models import Alert, AlertAction, AlertRule
from apps.core.exceptions import DomainError
from apps.experiments.models import Run
from apps.experiments.services import pipeline_run_create

logger = logging.getLogger(__name__)


def retrain_start(*, rule: AlertRule, alert: Alert) -> AlertAction:
    """In the evaluation's transaction (a savepoint, so a refused config is recorded, not raised)."""
    template = rule.retrain_from
    try:
        with transaction.atomic():
            pipeline_run = pipeline_run_create(project=rule.project, actor=None, config=template.config, config_text="")
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
    except (DomainError, ValueError) as exc:
        logger.warning("alert rule %s: retraining could not start: %s", rule.pk, exc)
        return AlertAction.objects.create(rule=rule, alert=alert, error=str(exc)[:2000])
    return AlertAction.objects.create(rule=rule, alert=alert, pipeline_run=pipeline_run)
