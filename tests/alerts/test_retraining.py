"""The closed loop: a firing rule starts a retraining pipeline from a pipeline run's config (once per cooldown),
the registered version's run carries the alert, and a promotion request to production and an A/B test against
the version serving are opened for it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.abtests import services as abtest_services
from apps.abtests.models import ABTest
from apps.alerts import services
from apps.alerts.models import AlertAction
from apps.experiments import services as experiment_services
from apps.experiments.models import PipelineRun
from apps.registry.models import ModelVersion, RegisteredModel
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


RETRAIN_IRIS = RETRAIN + "registry_config: {model_name: iris}\n"


def numbers_handed_out(model: RegisteredModel) -> None:
    """The factories number versions themselves; the registry must number the pipeline's version after them."""
    RegisteredModel.objects.filter(pk=model.pk).update(last_version_number=model.versions.count())


def test_the_challenger_the_retraining_registers_gets_an_ab_test_against_the_version_serving(
    project, owner, deployment, django_capture_on_commit_callbacks
) -> None:
    add_version(project, "iris")
    serving = deployment.targets.get().model_version
    numbers_handed_out(serving.model)
    template = experiment_services.pipeline_run_create(project=project, actor=owner, config_text=RETRAIN_IRIS)
    rule = services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        retrain_from=template,
        name="traffic gone",
        figure="throughput",
        comparator="lt",
        threshold=1,
        retrain_abtest_percent=20,
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.alert_rules_evaluate_due()
    action = AlertAction.objects.select_related("abtest").get()
    challenger = ModelVersion.objects.get(pipeline_run=action.pipeline_run)
    assert challenger.model_id == deployment.registered_model_id and action.error == ""
    abtest = action.abtest
    assert abtest.status == "running" and abtest.deployment_id == deployment.pk and abtest.created_by == owner
    assert abtest.primary_metric == "accuracy" and abtest.baseline == 0.9  # the serving version's validation value
    arms = [(arm.model_version_id, arm.weight) for arm in abtest.arms.order_by("position")]
    assert arms == [(serving.pk, 80), (challenger.pk, 20)]
    deployment.refresh_from_db()
    assert sorted((t.model_version_id, t.weight) for t in deployment.targets.filter(shadow=False)) == sorted(arms)
    assert action.promotion_request is None  # not asked for
    page = Client()
    page.force_login(owner)
    html = page.get(rule.get_absolute_url()).content.decode()
    assert abtest.get_absolute_url() in html and "20 % of the traffic" in html
    [listed] = page.get(f"/api/v1/alert-rules/{rule.pk}/actions/").json()
    assert (listed["abtest"], listed["abtest_status"], listed["deployment"]) == (abtest.pk, "running", deployment.pk)


def test_an_ab_test_that_cannot_start_stays_a_draft_with_the_reason(
    project, owner, deployment, django_capture_on_commit_callbacks
) -> None:
    add_version(project, "iris")
    serving = deployment.targets.get().model_version
    # Another test already runs on the deployment (v1 against a hand-registered v2).
    other = ModelVersion.objects.create(
        model=serving.model, number=serving.number + 1, signature=serving.signature, metrics=serving.metrics
    )
    running = abtest_services.abtest_create(
        deployment=deployment,
        actor=owner,
        name="manual",
        control=serving.pk,
        treatments=[other.pk],
        split=[50, 50],
        primary_metric="accuracy",
        mde=0.02,
        baseline=0.9,
    )
    with django_capture_on_commit_callbacks(execute=True):
        abtest_services.abtest_start(abtest=running, actor=owner)
    numbers_handed_out(serving.model)
    template = experiment_services.pipeline_run_create(project=project, actor=owner, config_text=RETRAIN_IRIS)
    services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        retrain_from=template,
        name="traffic gone",
        figure="throughput",
        comparator="lt",
        threshold=1,
        retrain_abtest_percent=10,
        retrain_open_promotion=True,
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.alert_rules_evaluate_due()
    action = AlertAction.objects.select_related("abtest", "promotion_request").get()
    assert action.abtest.status == "draft" and ABTest.objects.get(pk=running.pk).status == "running"
    assert action.error.startswith("A/B test left as a draft: A/B test manual is already running")
    assert action.promotion_request is not None and action.promotion_request.status == "open"
