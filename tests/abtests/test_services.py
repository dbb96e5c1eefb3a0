"""A/B test services: creation refuses bad input naming the field; start and stop change the deployment's split
in the test's transaction; outcomes are idempotent and unknown ids counted; readouts decide from real telemetry."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from django.core.exceptions import ValidationError as DjangoValidationError

from apps.abtests import services
from apps.abtests.models import ABTest, Outcome
from apps.core.exceptions import Conflict, NotFound, PermissionDenied, ValidationError
from apps.core.models import AuditEntry
from apps.deployments import services as deployment_services
from apps.deployments.models import Deployment
from apps.registry.models import PromotionRequest
from tests.abtests.conftest import log_requests, make_test
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db


def traffic(deployment: Deployment) -> list[tuple[int, int]]:
    return list(deployment.targets.filter(shadow=False).order_by("position").values_list("model_version_id", "weight"))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"split": [60, 50]}, "split"),
        ({"split": [100]}, "split"),
        ({"split": [0, 100]}, "split"),
        ({"treatments": []}, "treatments"),
        ({"primary_metric": "clicks"}, "primary_metric"),
        ({"alpha": 1.5}, "alpha"),
        ({"mde": 0}, "mde"),
        ({"baseline": 0.99}, "mde"),
        ({"primary_metric": "value", "baseline": 10.0}, "baseline_sd"),
        ({"guardrails": [{"metric": "cpu"}]}, "guardrails"),
        ({"guardrails": [{"metric": "error_rate", "margin": -1}]}, "guardrails"),
        ({"name": ""}, "name"),
        ({"planned_sample_size": 1}, "planned_sample_size"),
        ({"assignment_key": "cookie"}, "assignment_key"),
    ],
)
def test_create_refuses_bad_input_naming_the_field(
    deployment: Deployment, member: Any, v1: Any, v2: Any, overrides: dict, field: str
) -> None:
    with pytest.raises(DjangoValidationError) as caught:  # clean_name raises Django's, the rest ours
        make_test(deployment, member, v1, v2, **overrides)
    named = getattr(caught.value, "field", None) or next(iter(caught.value.message_dict))
    assert named == field
    assert not ABTest.objects.exists()


def test_create_refuses_treatment_equal_to_control_and_foreign_versions(
    deployment: Deployment, member: Any, v1: Any, project: Any
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_test(deployment, member, v1, v1)
    assert caught.value.field == "treatments" and "control" in str(caught.value)
    other = ModelVersionFactory(model=RegisteredModelFactory(project=project, name="other"), number=1)
    with pytest.raises(ValidationError) as caught:
        make_test(deployment, member, v1, other)
    assert caught.value.field == "treatments" and "iris" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        make_test(deployment, member, other, v1)
    assert caught.value.field == "control"


def test_create_on_a_stopped_deployment_is_a_conflict(deployment: Deployment, member: Any, v1: Any, v2: Any) -> None:
    deployment_services.deployment_stop(deployment=deployment, actor=member)
    with pytest.raises(Conflict) as caught:
        make_test(deployment, member, v1, v2)
    assert caught.value.field == "deployment"


def test_create_plans_the_sample_with_the_power_calculation(
    deployment: Deployment, member: Any, v1: Any, v2: Any
) -> None:
    from worker.abtests.power import sample_size

    abtest = make_test(deployment, member, v1, v2)
    expected = sample_size(kind="rate", baseline=0.3, mde=0.05, split=[50, 50])
    assert abtest.planned_sample_size == expected.total
    assert [(a.model_version_id, a.weight, a.position) for a in abtest.arms.all()] == [(v1.pk, 50, 0), (v2.pk, 50, 1)]
    assert AuditEntry.objects.filter(action="abtest.created").count() == 1


def test_roles(deployment: Deployment, v1: Any, v2: Any, viewer: Any, outsider: Any, approver: Any) -> None:
    with pytest.raises(PermissionDenied):
        make_test(deployment, viewer, v1, v2)
    with pytest.raises(NotFound):
        make_test(deployment, outsider, v1, v2)
    abtest = make_test(deployment, approver, v1, v2)
    with pytest.raises(PermissionDenied):
        services.abtest_start(abtest=abtest, actor=viewer)
    with pytest.raises(NotFound):
        services.abtest_start(abtest=abtest, actor=outsider)


def test_start_sets_the_split_and_a_refused_split_leaves_the_draft(
    deployment: Deployment, abtest: ABTest, member: Any, v1: Any, v2: Any
) -> None:
    generation = Deployment.objects.get(pk=deployment.pk).generation
    with pytest.raises(Conflict):
        services.abtest_start(abtest=abtest, actor=member, expected_generation=generation - 1)
    abtest.refresh_from_db()
    assert abtest.status == "draft" and abtest.started_at is None
    assert traffic(deployment) == [(v1.pk, 100)]
    services.abtest_start(abtest=abtest, actor=member, expected_generation=generation)
    abtest.refresh_from_db()
    assert abtest.status == "running" and abtest.started_at is not None
    assert traffic(deployment) == [(v1.pk, 50), (v2.pk, 50)]
    with pytest.raises(Conflict):
        services.abtest_start(abtest=abtest, actor=member)
    second = make_test(deployment, member, v1, v2)
    with pytest.raises(Conflict, match="already running"):
        services.abtest_start(abtest=second, actor=member)


def test_start_on_production_respects_the_gate(project: Any, owner: Any, member: Any, v1: Any, v2: Any) -> None:
    v1.stage = "production"
    v1.save()
    deployment = deployment_services.deployment_create(
        project=project, name="iris-prod", actor=owner, model_version=v1, environment="production"
    )
    abtest = make_test(deployment, member, v1, v2)
    with pytest.raises(PermissionDenied):
        services.abtest_start(abtest=abtest, actor=member)
    abtest.refresh_from_db()
    assert abtest.status == "draft" and traffic(deployment) == [(v1.pk, 100)]


def test_outcomes_by_request_id_and_key_idempotent_with_unknown_ids_counted(
    deployment: Deployment, running: ABTest, member: Any, v1: Any, v2: Any
) -> None:
    arms = log_requests(deployment, [f"user-{i}" for i in range(40)])
    items = [{"request_id": rid, "conversion": 1} for rid in list(arms)[:10]]
    items += [{"assignment_key": f"user-{i}", "conversion": 0} for i in range(10, 20)]
    items += [{"request_id": "nope", "conversion": 1}, {"assignment_key": "stranger", "conversion": 1}]
    items += [{"request_id": "r-30", "conversion": 2}, {"request_id": "r-31"}, {"conversion": 1}]
    result = services.abtest_outcomes_record(abtest=running, actor=member, items=items)
    assert (result.stored, result.replaced, result.unknown) == (20, 0, 2)
    assert result.unknown_ids == ["nope", "stranger"]
    assert {e["field"] for e in result.errors} == {"conversion", "request_id"} and len(result.errors) == 3
    versions = [v1.pk, v2.pk]
    stored = dict(Outcome.objects.filter(key_type="request_id").values_list("key", "model_version_id"))
    assert stored == {rid: versions[arms[rid]] for rid in list(arms)[:10]}
    again = services.abtest_outcomes_record(abtest=running, actor=member, items=items[:20])
    assert (again.stored, again.unchanged, again.replaced) == (20, 20, 0)
    flip = [{"request_id": "r-0", "conversion": 0}]
    changed = services.abtest_outcomes_record(abtest=running, actor=member, items=flip)
    assert changed.replaced == 1 and Outcome.objects.count() == 20


def test_outcomes_refused_for_a_label_metric_and_a_draft(
    deployment: Deployment, member: Any, v1: Any, v2: Any, abtest: ABTest
) -> None:
    with pytest.raises(Conflict):
        services.abtest_outcomes_record(abtest=abtest, actor=member, items=[])
    accuracy = make_test(deployment, member, v1, v2, primary_metric="accuracy", baseline=0.9)
    services.abtest_start(abtest=abtest, actor=member)
    services.abtest_stop(abtest=abtest, actor=member)
    services.abtest_start(abtest=accuracy, actor=member)
    with pytest.raises(Conflict) as caught:
        services.abtest_outcomes_record(abtest=accuracy, actor=member, items=[])
    assert caught.value.field == "primary_metric"


def _plant(deployment: Deployment, abtest: ABTest, member: Any, n: int, rates: tuple[float, float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    arms = log_requests(deployment, [f"k{seed}-{i}" for i in range(n)], prefix=f"s{seed}")
    items = [{"request_id": rid, "conversion": int(rng.random() < rates[arm])} for rid, arm in arms.items()]
    result = services.abtest_outcomes_record(abtest=abtest, actor=member, items=items)
    assert result.unknown == 0 and result.errors == []


def test_readout_and_stop_with_a_planted_lift_send_traffic_to_the_treatment(
    deployment: Deployment, running: ABTest, member: Any, approver: Any, v1: Any, v2: Any
) -> None:
    _plant(deployment, running, member, 4_000, (0.30, 0.40), seed=1)
    readout = services.abtest_readout_compute(abtest=running, actor=member)
    assert readout.decision == "treatment wins" and not readout.srm_invalid
    assert readout.result["winner_version"] == v2.pk
    assert sum(arm["assigned"] for arm in readout.result["arms"]) == 4_000
    stopped = services.abtest_stop(abtest=running, actor=member)
    assert stopped.status == "stopped" and stopped.winner_id == v2.pk and stopped.decision == "treatment wins"
    assert traffic(deployment) == [(v2.pk, 100)]
    assert running.readouts.count() == 2
    request = services.abtest_promote_winner(abtest=stopped, actor=member)
    assert request.version_id == v2.pk and request.target_stage == "production"
    assert "treatment wins" in request.comment and f"/abtests/{running.pk}/" in request.comment
    assert PromotionRequest.objects.get().status == "open"


def test_readout_with_a_skewed_assignment_is_invalid(
    deployment: Deployment, running: ABTest, member: Any, v1: Any
) -> None:
    # The skew a broken key would cause: 60/40 routing while the test says 50/50.
    arms = log_requests(deployment, [f"u{i}" for i in range(2_000)], weights=(60, 40))
    assert sum(arms.values()) < 900
    readout = services.abtest_readout_compute(abtest=running, actor=member)
    assert readout.srm_invalid and readout.srm_p_value < 0.001 and readout.decision == "invalid"
    stopped = services.abtest_stop(abtest=running, actor=member)
    assert stopped.winner_id == v1.pk and traffic(deployment) == [(v1.pk, 100)]
    with pytest.raises(Conflict):
        services.abtest_promote_winner(abtest=stopped, actor=member)


def test_guardrail_breach_overrides_a_win(deployment: Deployment, running: ABTest, member: Any, v1: Any) -> None:
    rng = np.random.default_rng(3)
    arms = log_requests(
        deployment,
        [f"g{i}" for i in range(4_000)],
        status=lambda arm, key: 500 if arm == 1 and rng.random() < 0.2 else 200,
    )
    items = [{"request_id": rid, "conversion": int(rng.random() < (0.3, 0.45)[arm])} for rid, arm in arms.items()]
    services.abtest_outcomes_record(abtest=running, actor=member, items=items)
    readout = services.abtest_readout_compute(abtest=running, actor=member)
    assert readout.decision == "control wins" and "guardrail" in readout.reason


def test_accuracy_from_labels(deployment: Deployment, member: Any, v1: Any, v2: Any, project: Any) -> None:
    from apps.telemetry.services import prediction_labels_store

    abtest = make_test(deployment, member, v1, v2, primary_metric="accuracy", baseline=0.7, mde=0.1)
    services.abtest_start(abtest=abtest, actor=member)
    rng = np.random.default_rng(4)
    arms = log_requests(deployment, [f"a{i}" for i in range(600)])
    labels = [{"request_id": rid, "label": "a" if rng.random() < (0.6, 0.9)[arm] else "b"} for rid, arm in arms.items()]
    assert prediction_labels_store(actor=member, project=project, items=labels).stored == 600
    readout = services.abtest_readout_compute(abtest=abtest, actor=member)
    means = {arm["model_version"]: arm["mean"] for arm in readout.result["arms"]}
    for version, arm_index in ((v1.pk, 0), (v2.pk, 1)):
        truth = [label["label"] == "a" for label, rid in zip(labels, arms, strict=True) if arms[rid] == arm_index]
        assert means[version] == pytest.approx(np.mean(truth))
    assert readout.decision == "treatment wins"


def test_beat_readouts_cover_every_running_test(
    deployment: Deployment, running: ABTest, abtest_draft: ABTest, member: Any
) -> None:
    from apps.abtests.tasks import abtests_readouts_refresh_task

    log_requests(deployment, [f"b{i}" for i in range(50)])
    assert abtests_readouts_refresh_task() == 1
    assert running.readouts.count() == 1 and abtest_draft.readouts.count() == 0
    assert abtests_readouts_refresh_task() == 1
    assert running.readouts.count() == 2


@pytest.fixture
def abtest_draft(running: ABTest, deployment: Deployment, member: Any, v1: Any, v2: Any) -> ABTest:
    return make_test(deployment, member, v1, v2)


def test_three_arms_holm_adjusted(deployment: Deployment, member: Any, v1: Any, v2: Any, model: Any) -> None:
    from statsmodels.stats.multitest import multipletests

    v3 = ModelVersionFactory(model=model, number=3)
    abtest = make_test(deployment, member, v1, v2, treatments=[v2.pk, v3.pk], split=[34, 33, 33])
    services.abtest_start(abtest=abtest, actor=member)
    assert traffic(deployment) == [(v1.pk, 34), (v2.pk, 33), (v3.pk, 33)]
    rng = np.random.default_rng(9)
    arms = log_requests(deployment, [f"h{i}" for i in range(3_000)], weights=(34, 33, 33))
    rates = (0.30, 0.36, 0.31)
    items = [{"request_id": rid, "conversion": int(rng.random() < rates[arm])} for rid, arm in arms.items()]
    services.abtest_outcomes_record(abtest=abtest, actor=member, items=items)
    engine = services.abtest_readout_compute(abtest=abtest, actor=member).result["engine"]
    raw = [c["fixed"]["p_value"] for c in engine["comparisons"]]
    adjusted = [c["p_value_holm"] for c in engine["comparisons"]]
    assert [c["arm"] for c in engine["comparisons"]] == ["v2", "v3"]
    assert adjusted == pytest.approx(list(multipletests(raw, method="holm")[1]), abs=1e-12)
