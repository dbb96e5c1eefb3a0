"""The closed loop: a firing rule starts a retraining pipeline from a pipeline run's config; the pipeline's
run carries the alert in its tags (the registered version's lineage shows them), and when the rule asks, the
version the pipeline registers gets a promotion request to production and/or an A/B test against the version
serving (see `challenger_on_registered`)."""

from __future__ import annotations

import logging

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction

from apps.abtests.choices import ABTestMetric
from apps.abtests.models import ABTest
from apps.abtests.services import abtest_create, abtest_start
from apps.alerts.models import Alert, AlertAction, AlertRule
from apps.core.exceptions import DomainError
from apps.deployments.selectors import deployment_targets
from apps.experiments.models import Run
from apps.experiments.services import pipeline_run_create
from apps.registry.choices import ModelVersionStage, RegistryEventType
from apps.registry.models import ModelVersion, PromotionRequest, RegistryEvent
from apps.registry.services import promotion_request_create

logger = logging.getLogger(__name__)
# The A/B test a retraining starts looks for an accuracy change of this much (absolute) either way.
ABTEST_MDE = 0.02


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


def challenger_on_registered(event: RegistryEvent) -> None:
    """Registry event handler: a version registered by a pipeline an alert started is the challenger. When its
    rule asks, it gets a promotion request to production and/or an A/B test against the version serving the
    alert's deployment, both in the name of the rule's author (who set the rule up to do so); a human approver
    still decides the promotion, and the test's readout decides nothing by itself. Idempotent: what the action
    already has is left alone; each failure is recorded on the action (shown on the rule's page)."""
    if event.type != RegistryEventType.VERSION_REGISTERED or event.version_id is None:
        return
    version = event.version
    if version.pipeline_run_id is None:
        return
    # Events are delivered at least once, maybe to two workers at once: the action's row lock makes one act.
    with transaction.atomic():
        action = (
            AlertAction.objects.select_for_update(of=("self",))
            .select_related("rule__created_by", "alert__deployment")
            .filter(pipeline_run_id=version.pipeline_run_id)
            .first()
        )
        if action is not None:
            _challenger_actions(action, version)


def _challenger_actions(action: AlertAction, version: ModelVersion) -> None:
    rule = action.rule
    errors = []
    changes: dict[str, object] = {}
    if rule.retrain_open_promotion and action.promotion_request_id is None:
        try:
            changes["promotion_request"] = _promotion_open(rule, action, version)
        except (DomainError, DjangoValidationError) as exc:
            errors.append(f"promotion request: {exc}")
    if rule.retrain_abtest_percent and action.abtest_id is None:
        try:
            changes["abtest"] = _abtest_start(rule, action, version, errors)
        except (DomainError, DjangoValidationError, ValueError) as exc:
            errors.append(f"A/B test: {exc}")
    if errors:
        changes["error"] = "; ".join(errors)[:2000]
    if changes:
        AlertAction.objects.filter(pk=action.pk).update(**changes)


def _author(rule: AlertRule) -> AbstractBaseUser:
    if rule.created_by is None:
        raise DomainError("the rule's author no longer exists; nobody can act in their name")
    return rule.created_by


def _promotion_open(rule: AlertRule, action: AlertAction, version: ModelVersion) -> PromotionRequest:
    with transaction.atomic():
        return promotion_request_create(
            version=version,
            actor=_author(rule),
            target_stage=ModelVersionStage.PRODUCTION,
            comment=f"Retrained because alert rule {rule.name!r} fired (alert #{action.alert_id}).",
        )


def _abtest_start(rule: AlertRule, action: AlertAction, challenger: ModelVersion, errors: list[str]) -> ABTest:
    """A draft A/B test of the challenger against the deployment's main live version on accuracy (its registered
    validation accuracy as the baseline), then started; a test that cannot start (another one runs) stays a
    draft the user can start later, and the reason is recorded."""
    author = _author(rule)
    if action.alert is None:
        raise DomainError("the alert that started the retraining was deleted; no deployment to test on")
    deployment = action.alert.deployment
    live, _ = deployment_targets(deployment)
    if not live:
        raise DomainError(f"deployment {deployment.name} serves no model version")
    control = max(live, key=lambda target: target.weight).model_version
    baseline = (control.metrics or {}).get("accuracy")
    if not isinstance(baseline, int | float):
        raise DomainError(f"{control} has no registered accuracy to plan the test from")
    percent = rule.retrain_abtest_percent
    with transaction.atomic():
        abtest = abtest_create(
            deployment=deployment,
            actor=author,
            name=f"alert #{action.alert_id}: v{challenger.number} vs v{control.number}",
            control=control.pk,
            treatments=[challenger.pk],
            split=[100 - percent, percent],
            primary_metric=ABTestMetric.ACCURACY,
            mde=ABTEST_MDE,
            baseline=float(baseline),
            description=f"Started by alert rule {rule.name!r}: the version its retraining registered against the "
            "version serving.",
        )
    try:
        with transaction.atomic():
            abtest_start(abtest=abtest, actor=author)
    except (DomainError, DjangoValidationError) as exc:
        errors.append(f"A/B test left as a draft: {exc}")
        abtest.refresh_from_db()
    return abtest
