"""The closed loop: a firing rule starts a retraining pipeline from a pipeline run's config (once per cooldown),
the registered version's run carries the alert, and a promotion request to production is opened for it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.alerts import services
from apps.alerts.models import AlertAction
from apps.experiments import services as experiment_services
from apps.experiments.models import PipelineRun
from apps.registry.models import ModelVersion
from tests.experiments.conftest import add_version

pytestmark = pytest.mark.django_db

RETRAIN = """
experiment_id: retrain
data_config: {dataset: iris, split: 0.8}
model_config: {algorithm: random_forest, n_estimators: 5}
"""


def test_a_firing_rule_retrains_once_per_cooldown_and_asks_for_promotion(
    project, owner, deployment, django_capture_on_commit_callbacks
) -> None:
    add_version(project, "iris")
    template = experiment_services.pipeline_run_create(project=project, actor=owner, config_text=RETRAIN)
    rule = services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        retrain_from=template,
        name="traffic gone",
        figure="throughput",
        comparator="lt",
        threshold=1,
        retrain_open_promotion=True,
        retrain_cooldown_seconds=3600,
    )
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        services.alert_rules_evaluate_due(now=now)
    [action] = AlertAction.objects.all()
    assert action.error == "" and action.pipeline_run.status == "succeeded", action.pipeline_run.error
    run = action.pipeline_run.run
    assert run.tags["alert_rule"] == str(rule.pk) and run.tags["alert_deployment"] == "iris"
    version = ModelVersion.objects.get(pipeline_run=action.pipeline_run)
    assert version.run_id == run.pk  # the alert is in the registered version's lineage (its run's tags)
    action.refresh_from_db()
    assert action.promotion_request.version == version
    assert action.promotion_request.target_stage == "production" and action.promotion_request.status == "open"

    # Resolved, then firing again within the cooldown: no second pipeline; after it: one more.
    with django_capture_on_commit_callbacks(execute=True):
        services.alert_rule_update(rule=rule, actor=owner, threshold=-1)
        services.alert_rules_evaluate_due(now=now + timedelta(minutes=1))
        services.alert_rule_update(rule=rule, actor=owner, threshold=1)
        services.alert_rules_evaluate_due(now=now + timedelta(minutes=2))
    assert AlertAction.objects.count() == 1 and PipelineRun.objects.count() == 2
    with django_capture_on_commit_callbacks(execute=True):
        services.alert_rule_update(rule=rule, actor=owner, threshold=-1)
        services.alert_rules_evaluate_due(now=now + timedelta(minutes=70))
        services.alert_rule_update(rule=rule, actor=owner, threshold=1)
        services.alert_rules_evaluate_due(now=now + timedelta(minutes=71))
    assert AlertAction.objects.count() == 2
    page = Client()
    page.force_login(owner)
    html = page.get(rule.get_absolute_url()).content.decode()
    assert f"pipeline run #{action.pipeline_run_id}" in html and "promotion request" in html
