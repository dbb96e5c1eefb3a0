"""Use cases of A/B tests: create, start, stop, record outcomes, compute a readout, promote the winner, plan.

Starting sets the deployment's split through `deployment_set_traffic` (its generation check and production gate
apply) in the transaction that marks the test running, so a refused split leaves the test a draft; stopping
computes the final readout, records the decision and sends all traffic to the winner (or the control). Every
change is audited; the role checks are here (`require_project_role`), so the API, the pages, the commands and
the tasks share them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from apps.abtests import selectors
from apps.abtests.choices import ABTestMetric, ABTestStatus, AssignmentKey, GuardrailMetric, OutcomeKeyType
from apps.abtests.models import ABTest, ABTestArm, ABTestReadout, Outcome
from apps.core.choices import ProjectRole
from apps.core.exceptions import Conflict, ValidationError
from apps.core.permissions import require_project_role
from apps.core.services import audit_record, clean_name
from apps.deployments.choices import DeploymentStatus
from apps.deployments.models import Deployment
from apps.deployments.services import ACTIVE_PHASES, deployment_set_traffic
from apps.registry.choices import ModelVersionStage
from apps.registry.models import ModelVersion, PromotionRequest
from apps.registry.services import promotion_request_create
from apps.telemetry.models import PredictionLog
from serving.app import TrafficSplit
from worker.abtests import power
from worker.abtests.readout import ABConfig, Decision, GuardrailSpec, MetricSpec, readout
from worker.abtests.stats import RATE, ArmStats

logger = logging.getLogger(__name__)

MAX_OUTCOMES_PER_REQUEST = 50_000
OUTCOME_LOOKUP_CHUNK = 5_000
UNKNOWN_IDS_SHOWN = 100
BATCH_SIZE = 500
# The engine's ValueError names its field first ("mde must be above 0"); these are the form's names for them.
_ENGINE_FIELDS = {"sd": "baseline_sd", "mde:": "mde", "planned_total": "planned_sample_size"}


def _require_editor(actor: AbstractBaseUser | None, deployment: Deployment) -> None:
    # actor=None is the system (beat's readouts, the demo command).
    if actor is not None:
        require_project_role(actor, deployment.project, ProjectRole.EDITOR)


def _engine_error(exc: ValueError) -> ValidationError:
    message = str(exc)
    first = message.split(" ", 1)[0]
    return ValidationError(message, field=_ENGINE_FIELDS.get(first, first.rstrip(":").split(".")[0]))


def _lock(abtest: ABTest) -> ABTest:
    return ABTest.objects.select_for_update().select_related("deployment__project").get(pk=abtest.pk)


def _number(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError("must be a number", field=name)
    if (low is not None and value <= low) or (high is not None and value >= high):
        bounds = f"above {low:g}" if high is None else f"between {low:g} and {high:g} (exclusive)"
        raise ValidationError(f"must be {bounds}", field=name)
    return float(value)


def _versions(deployment: Deployment, control: int, treatments: Sequence[int]) -> list[ModelVersion]:
    if not treatments:
        raise ValidationError("give at least one treatment model version", field="treatments")
    ids = [control, *treatments]
    if control in treatments:
        raise ValidationError("a treatment must not be the control version", field="treatments")
    if len(set(treatments)) != len(treatments):
        raise ValidationError("a model version appears twice", field="treatments")
    found = {v.pk: v for v in ModelVersion.objects.filter(pk__in=ids).select_related("model")}
    versions = []
    for version_id, name in zip(ids, ["control", *["treatments"] * len(treatments)], strict=True):
        version = found.get(version_id)
        if version is None or version.model_id != deployment.registered_model_id:
            raise ValidationError(
                f"model {deployment.registered_model.name} (of deployment {deployment.name}) has no version with id "
                f"{version_id}; an A/B test compares versions of the deployment's model",
                field=name,
            )
        if version.stage == ModelVersionStage.ARCHIVED:
            raise ValidationError(f"{version} is archived; pick a current version", field=name)
        versions.append(version)
    return versions


def _split(split: Any, arms: int) -> list[int]:
    if not isinstance(split, list | tuple) or len(split) != arms:
        raise ValidationError(f"give one percentage per arm, control first ({arms} numbers)", field="split")
    if any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 99 for w in split):
        raise ValidationError("every arm takes a whole percentage from 1 to 99", field="split")
    if sum(split) != 100:
        raise ValidationError(f"the percentages must sum to 100, not {sum(split)}", field="split")
    return [int(w) for w in split]


def _guardrails(guardrails: Any) -> list[dict[str, Any]]:
    if not isinstance(guardrails, list):
        raise ValidationError('a list of {"metric", "margin"} objects', field="guardrails")
    cleaned = []
    for index, item in enumerate(guardrails):
        if not isinstance(item, Mapping) or item.get("metric") not in GuardrailMetric.values:
            choices = ", ".join(GuardrailMetric.values)
            raise ValidationError(f"guardrails[{index}].metric must be one of {choices}", field="guardrails")
        margin = item.get("margin", 0)
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin) or margin < 0:
            raise ValidationError(f"guardrails[{index}].margin must be a number of at least 0", field="guardrails")
        cleaned.append({"metric": item["metric"], "margin": float(margin)})
    if len({g["metric"] for g in cleaned}) != len(cleaned):
        raise ValidationError("a guardrail metric appears twice", field="guardrails")
    return cleaned


def abtest_power_plan(
    *,
    deployment: Deployment,
    primary_metric: str,
    baseline: float,
    mde: float,
    split: Sequence[float],
    mde_relative: bool = False,
    baseline_sd: float | None = None,
    alpha: float = 0.05,
    power_: float = 0.8,
    sequential: bool = True,
) -> power.SamplePlan:
    """Units per arm to detect the MDE, and the expected days at the deployment's traffic of the last week."""
    if primary_metric not in ABTestMetric.values:
        raise ValidationError(f"choose one of {', '.join(ABTestMetric.values)}", field="primary_metric")
    try:
        return power.sample_size(
            kind=ABTestMetric.kind(primary_metric),
            baseline=baseline,
            mde=mde,
            sd=baseline_sd,
            relative=mde_relative,
            alpha=alpha,
            power=power_,
            split=list(split),
            sequential=sequential,
            traffic_per_day=selectors.traffic_per_day(deployment_id=deployment.pk),
        )
    except ValueError as exc:
        raise _engine_error(exc) from None


# ------------------------------------------------------------------------------------------ lifecycle


@transaction.atomic
def abtest_create(
    *,
    deployment: Deployment,
    actor: AbstractBaseUser,
    name: str,
    control: int,
    treatments: Sequence[int],
    split: Sequence[int],
    primary_metric: str,
    mde: float,
    baseline: float,
    mde_relative: bool = False,
    baseline_sd: float | None = None,
    alpha: float = 0.05,
    power_: float = 0.8,
    sequential: bool = True,
    planned_sample_size: int | None = None,
    guardrails: Any = (),
    assignment_key: str = AssignmentKey.HEADER,
    description: str = "",
) -> ABTest:
    """A draft test on `deployment` (editors). Without `planned_sample_size` the power calculation sets it."""
    deployment = Deployment.objects.select_related("project", "registered_model").get(pk=deployment.pk)
    require_project_role(actor, deployment.project, ProjectRole.EDITOR)
    name, _ = clean_name(name, missing="Give the test a name.")
    if deployment.status == DeploymentStatus.STOPPED:
        raise Conflict(f"Deployment {deployment.name} is stopped; start it first.", field="deployment")
    versions = _versions(deployment, control, list(treatments))
    weights = _split(list(split), len(versions))
    if primary_metric not in ABTestMetric.values:
        raise ValidationError(f"choose one of {', '.join(ABTestMetric.values)}", field="primary_metric")
    if assignment_key not in AssignmentKey.values:
        raise ValidationError(f"choose one of {', '.join(AssignmentKey.values)}", field="assignment_key")
    alpha = _number(alpha, "alpha", low=0, high=1)
    power_ = _number(power_, "power", low=0, high=1)
    mde = _number(mde, "mde", low=0)
    baseline = _number(baseline, "baseline")
    cleaned_guardrails = _guardrails(list(guardrails))
    plan = abtest_power_plan(
        deployment=deployment,
        primary_metric=primary_metric,
        baseline=baseline,
        mde=mde,
        split=weights,
        mde_relative=mde_relative,
        baseline_sd=baseline_sd,
        alpha=alpha,
        power_=power_,
        sequential=sequential,
    )
    if planned_sample_size is not None and (
        isinstance(planned_sample_size, bool) or not isinstance(planned_sample_size, int) or planned_sample_size < 2
    ):
        raise ValidationError("must be a whole number of units of at least 2", field="planned_sample_size")
    total = planned_sample_size or plan.total
    per_day = selectors.traffic_per_day(deployment_id=deployment.pk)
    abtest = ABTest.objects.create(
        deployment=deployment,
        name=name,
        description=description.strip(),
        primary_metric=primary_metric,
        guardrails=cleaned_guardrails,
        mde=mde,
        mde_relative=bool(mde_relative),
        alpha=alpha,
        power=power_,
        baseline=baseline,
        baseline_sd=baseline_sd,
        sequential=bool(sequential),
        planned_sample_size=total,
        planned_duration_days=total / per_day if per_day else None,
        assignment_key=assignment_key,
        created_by=actor,
    )
    ABTestArm.objects.bulk_create(
        ABTestArm(abtest=abtest, model_version=version, weight=weight, position=position)
        for position, (version, weight) in enumerate(zip(versions, weights, strict=True))
    )
    audit_record(
        actor=actor,
        action="abtest.created",
        obj=abtest,
        project=deployment.project,
        after={
            "deployment": deployment.pk,
            "arms": [{"model_version": v.pk, "weight": w} for v, w in zip(versions, weights, strict=True)],
            "primary_metric": primary_metric,
            "mde": mde,
            "alpha": alpha,
            "power": power_,
            "planned_sample_size": total,
        },
    )
    return abtest


@transaction.atomic
def abtest_start(*, abtest: ABTest, actor: AbstractBaseUser | None, expected_generation: int | None = None) -> ABTest:
    """Set the deployment's split to the arms' weights and mark the test running, in one transaction."""
    abtest = _lock(abtest)
    deployment = abtest.deployment
    _require_editor(actor, deployment)
    if abtest.status != ABTestStatus.DRAFT:
        raise Conflict(f"A/B test {abtest.name} is {abtest.status}; only a draft can start.")
    if deployment.status == DeploymentStatus.STOPPED:
        raise Conflict(f"Deployment {deployment.name} is stopped; start it first.", field="deployment")
    running = ABTest.objects.filter(deployment=deployment, status=ABTestStatus.RUNNING).first()
    if running is not None:
        raise Conflict(f"A/B test {running.name} is already running on {deployment.name}; stop it first.")
    arms = selectors.arms(abtest)
    traffic = [{"model_version": arm.model_version_id, "weight": arm.weight} for arm in arms]
    deployment_set_traffic(deployment=deployment, traffic=traffic, actor=actor, expected_generation=expected_generation)
    abtest.status, abtest.started_at = ABTestStatus.RUNNING, timezone.now()
    abtest.save(update_fields=["status", "started_at", "updated_at"])
    audit_record(
        actor=actor, action="abtest.started", obj=abtest, project=deployment.project, after={"traffic": traffic}
    )
    return abtest


@transaction.atomic
def abtest_stop(
    *, abtest: ABTest, actor: AbstractBaseUser | None, winner: int | None = None, reason: str = ""
) -> ABTest:
    """Compute the final readout, record the decision, send all traffic to the winner (by default the readout's
    winner, else the control). `winner` (a model version id of an arm) overrides the readout's choice."""
    abtest = _lock(abtest)
    deployment = abtest.deployment
    _require_editor(actor, deployment)
    if abtest.status != ABTestStatus.RUNNING:
        raise Conflict(f"A/B test {abtest.name} is {abtest.status}; only a running test can stop.")
    arms = selectors.arms(abtest)
    by_version = {arm.model_version_id: arm for arm in arms}
    if winner is not None and winner not in by_version:
        raise ValidationError("must be the model version id of one of the test's arms", field="winner")
    now = timezone.now()
    abtest.stopped_at = now
    final = _readout(abtest, arms, until=now)
    readout_winner = final.result.get("winner_version")
    chosen = by_version[winner or readout_winner or arms[0].model_version_id]
    notes = [f"Readout: {final.decision} ({final.reason})"]
    if winner is not None and winner != readout_winner:
        notes.append(f"{chosen.model_version} chosen by hand" + (f": {reason.strip()}" if reason.strip() else ""))
    deployment.refresh_from_db()
    if deployment.status == DeploymentStatus.STOPPED or deployment.phase in ACTIVE_PHASES:
        notes.append(f"traffic left as it is: deployment {deployment.name} is {deployment.get_status_display()}")
    else:
        deployment_set_traffic(
            deployment=deployment, traffic=[{"model_version": chosen.model_version_id, "weight": 100}], actor=actor
        )
        notes.append(f"all traffic to {chosen.model_version}")
    abtest.status = ABTestStatus.STOPPED
    abtest.decision, abtest.decision_reason = final.decision, ". ".join(notes)
    abtest.winner = chosen.model_version
    abtest.save(update_fields=["status", "stopped_at", "decision", "decision_reason", "winner", "updated_at"])
    audit_record(
        actor=actor,
        action="abtest.stopped",
        obj=abtest,
        project=deployment.project,
        after={"decision": final.decision, "winner": chosen.model_version_id, "readout": final.pk},
        message=abtest.decision_reason,
    )
    return abtest


# ------------------------------------------------------------------------------------------ outcomes


@dataclass
class OutcomeResult:
    """What an outcomes request did: `stored` outcomes (new or replacing), of which `replaced` changed an earlier
    value and `unchanged` repeated it; `unknown` ids with no request of the test's arms (the first listed);
    the items refused, each naming its field."""

    stored: int = 0
    replaced: int = 0
    unchanged: int = 0
    unknown: int = 0
    unknown_ids: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def error(self, index: int, field_name: str, message: str) -> None:
        self.errors.append({"index": index, "field": field_name, "message": message})


def _parse_outcome(item: Any, metric: str) -> tuple[str, str, float] | tuple[str, str]:
    """(key type, key, value) of a well-formed item, or (field, message)."""
    if not isinstance(item, Mapping):
        return "body", "each item is an object with request_id or assignment_key, and conversion or value"
    if ("request_id" in item) == ("assignment_key" in item):
        return "request_id", "give either request_id (X-Request-Id of the answer) or assignment_key, not both"
    key_type = OutcomeKeyType.REQUEST_ID if "request_id" in item else OutcomeKeyType.ASSIGNMENT_KEY
    key = item[key_type]
    limit = 64 if key_type == OutcomeKeyType.REQUEST_ID else 200
    if not isinstance(key, str | int) or isinstance(key, bool) or not 0 < len(str(key)) <= limit:
        return key_type, f"must be a string of 1 to {limit} characters"
    wanted = "conversion" if metric == ABTestMetric.CONVERSION else "value"
    if ("conversion" in item) == ("value" in item) or wanted not in item:
        return wanted, f"the test's primary metric is {metric}: give {wanted} (and not the other)"
    value = item[wanted]
    if wanted == "conversion":
        if value not in (0, 1) or (not isinstance(value, bool | int) and value not in (0.0, 1.0)):
            return "conversion", "must be 0 or 1"
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "value", "must be a finite number"
    return key_type, str(key), float(value)


def _exposed(abtest: ABTest, version_ids: list[int], column: str, keys: list[str]) -> dict[str, int]:
    """key -> the version of its (first) request answered by an arm during the test."""
    logs = PredictionLog.objects.filter(
        deployment_id=abtest.deployment_id,
        shadow=False,
        model_version_id__in=version_ids,
        created_at__gte=abtest.started_at,
    )
    if abtest.stopped_at is not None:
        logs = logs.filter(created_at__lt=abtest.stopped_at)
    found: dict[str, int] = {}
    for start in range(0, len(keys), OUTCOME_LOOKUP_CHUNK):
        chunk = keys[start : start + OUTCOME_LOOKUP_CHUNK]
        for key, version_id in logs.filter(**{f"{column}__in": chunk}).values_list(column, "model_version_id"):
            found.setdefault(key, version_id)
    return found


def abtest_outcomes_record(*, abtest: ABTest, actor: AbstractBaseUser, items: Any) -> OutcomeResult:
    """Store business outcomes (editors), by request id or assignment key; idempotent per unit.

    A request id belongs to the arm that answered it. An assignment key belongs to the arm the model server's
    sticky hash assigns it (serving.app `TrafficSplit`, the arms' weights in arm order, as the test set them):
    the unit is analysed as assigned, and it must have sent at least one request an arm answered during the
    test, else it counts as unknown. A malformed item is refused alone, naming its field.
    """
    abtest = ABTest.objects.select_related("deployment__project").get(pk=abtest.pk)
    require_project_role(actor, abtest.deployment.project, ProjectRole.EDITOR)
    if abtest.status == ABTestStatus.DRAFT:
        raise Conflict(f"A/B test {abtest.name} has not started; outcomes come from its traffic.")
    if not ABTestMetric.from_outcomes(abtest.primary_metric):
        raise Conflict(
            f"The primary metric of {abtest.name} is {abtest.primary_metric}, computed from feedback labels; "
            "send labels to /api/v1/feedback/ instead.",
            field="primary_metric",
        )
    if not isinstance(items, list):
        raise ValidationError("must be a JSON list of outcome objects", field="body")
    if len(items) > MAX_OUTCOMES_PER_REQUEST:
        raise ValidationError(f"at most {MAX_OUTCOMES_PER_REQUEST:,} outcomes per request", field="body")
    arms = selectors.arms(abtest)
    version_ids = [arm.model_version_id for arm in arms]
    split = TrafficSplit(arm.weight for arm in arms)
    result = OutcomeResult()
    parsed: dict[tuple[str, str], tuple[int, float]] = {}
    for index, item in enumerate(items):
        outcome = _parse_outcome(item, abtest.primary_metric)
        if len(outcome) == 2:
            result.error(index, *outcome)
        else:
            parsed[(outcome[0], outcome[1])] = (index, outcome[2])  # a repeated unit: the last value wins
    request_ids = [key for key_type, key in parsed if key_type == OutcomeKeyType.REQUEST_ID]
    keys = [key for key_type, key in parsed if key_type == OutcomeKeyType.ASSIGNMENT_KEY]
    by_request = _exposed(abtest, version_ids, "request_id", request_ids)
    exposed_keys = _exposed(abtest, version_ids, "request_key", keys)
    rows: dict[tuple[str, str], tuple[int, float]] = {}
    for (key_type, key), (_, value) in parsed.items():
        if key_type == OutcomeKeyType.REQUEST_ID:
            version_id = by_request.get(key)
        else:
            version_id = version_ids[split.pick(key)] if key in exposed_keys else None
        if version_id is None:
            result.unknown += 1
            if len(result.unknown_ids) < UNKNOWN_IDS_SHOWN:
                result.unknown_ids.append(key)
            continue
        rows[(key_type, key)] = (version_id, value)
    _outcomes_write(abtest, actor, rows, result)
    return result


def _outcomes_write(
    abtest: ABTest, actor: AbstractBaseUser, rows: dict[tuple[str, str], tuple[int, float]], result: OutcomeResult
) -> None:
    now = timezone.now()
    with transaction.atomic():
        existing: dict[tuple[str, str], float] = {}
        keys = [key for _, key in rows]
        for start in range(0, len(keys), OUTCOME_LOOKUP_CHUNK):
            for key_type, key, value in (
                Outcome.objects.select_for_update()
                .filter(abtest=abtest, key__in=keys[start : start + OUTCOME_LOOKUP_CHUNK])
                .values_list("key_type", "key", "value")
            ):
                existing[(key_type, key)] = value
        changed = []
        for unit, (version_id, value) in rows.items():
            result.stored += 1
            before = existing.get(unit)
            if before == value:
                result.unchanged += 1
                continue
            if before is not None:
                result.replaced += 1
            changed.append(
                Outcome(
                    abtest=abtest,
                    key_type=unit[0],
                    key=unit[1],
                    model_version_id=version_id,
                    value=value,
                    received_at=now,
                )
            )
        Outcome.objects.bulk_create(
            changed,
            batch_size=BATCH_SIZE,
            update_conflicts=True,
            unique_fields=["abtest", "key_type", "key"],
            update_fields=["model_version", "value", "received_at"],
        )
        if changed:
            audit_record(
                actor=actor,
                action="abtest.outcomes_recorded",
                obj=abtest,
                project=abtest.deployment.project,
                after={"stored": len(changed), "replaced": result.replaced, "unknown": result.unknown},
            )


# ------------------------------------------------------------------------------------------ readout


def _jsonable(value: Any) -> Any:
    """The engine's dataclass tree as JSON: tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def _arm_label(arm: ABTestArm) -> str:
    return f"v{arm.model_version.number}"


def _readout(abtest: ABTest, arms: list[ABTestArm], *, until: datetime | None = None) -> ABTestReadout:
    window = selectors.test_window(abtest, until)
    if window is None:
        raise Conflict(f"A/B test {abtest.name} has not started; there is nothing to read out.")
    version_ids = [arm.model_version_id for arm in arms]
    labels = {arm.model_version_id: _arm_label(arm) for arm in arms}
    metric = abtest.primary_metric
    if ABTestMetric.from_outcomes(metric):
        primary = selectors.outcome_stats(abtest, version_ids)
    else:
        primary = selectors.label_stats(abtest, version_ids, window)
    assigned = selectors.assignment_counts(abtest, version_ids, window)
    latency = selectors.guardrail_windows(abtest, version_ids, window)
    margins = {g["metric"]: g["margin"] for g in abtest.guardrails}
    specs, guardrail_stats = [], {}
    if GuardrailMetric.ERROR_RATE in margins:
        specs.append(GuardrailSpec(GuardrailMetric.ERROR_RATE, RATE, margins[GuardrailMetric.ERROR_RATE], False))
        guardrail_stats[GuardrailMetric.ERROR_RATE.value] = {
            labels[v]: ArmStats(latency[v].requests, float(latency[v].errors), float(latency[v].errors))
            for v in version_ids
        }
    config = ABConfig(
        arms=tuple(labels[v] for v in version_ids),
        split=tuple(float(arm.weight) for arm in arms),
        primary=MetricSpec(metric, ABTestMetric.kind(metric), ABTestMetric.higher_is_better(metric)),
        mde=abtest.mde,
        planned_total=abtest.planned_sample_size,
        mde_relative=abtest.mde_relative,
        alpha=abtest.alpha,
        sequential=abtest.sequential,
        guardrails=tuple(specs),
    )
    previous = abtest.readouts.filter(as_of__lte=window.until).order_by("-as_of", "-id").first()
    engine = _jsonable(
        readout(
            config=config,
            primary={labels[v]: primary[v] for v in version_ids},
            guardrails=guardrail_stats,
            assignments={labels[v]: assigned[v] for v in version_ids},
            previous=previous.result.get("engine") if previous is not None else None,
        ).to_dict()
    )
    decision, reason = engine["decision"], engine["reason"]
    winner = next((v for v in version_ids if labels[v] == engine["winner"]), None)
    # p99 latency is no function of sufficient statistics (the engine's input): the console checks it against
    # the control's p99 from the rollups' histograms, and a breach overrides a win as the engine's guardrails do.
    p99_breaches = []
    if GuardrailMetric.P99_LATENCY in margins:
        control_p99 = latency[version_ids[0]].p99_ms
        for version_id in version_ids[1:]:
            p99 = latency[version_id].p99_ms
            if control_p99 is not None and p99 is not None and p99 - control_p99 > margins[GuardrailMetric.P99_LATENCY]:
                p99_breaches.append(version_id)
                reason_text = (
                    f"p99 latency {p99:.1f} ms against the control's {control_p99:.1f} ms "
                    f"(allowed +{margins[GuardrailMetric.P99_LATENCY]:g} ms)"
                )
                for comparison in engine["comparisons"]:
                    if comparison["arm"] == labels[version_id]:
                        comparison["decision"] = Decision.CONTROL_WINS
                        comparison["reason"] = f"guardrail breached: {reason_text}"
    if winner is not None and winner in p99_breaches:
        decision, winner = Decision.CONTROL_WINS, None
        reason = f"{labels[version_ids[0]]} kept: {engine['winner']} breaches the p99 latency guardrail"
    arm_rows = [
        {
            "model_version": arm.model_version_id,
            "label": labels[arm.model_version_id],
            "name": arm.name,
            "weight": arm.weight,
            "assigned": assigned[arm.model_version_id],
            "n": primary[arm.model_version_id].n,
            "mean": primary[arm.model_version_id].mean,
            "requests": latency[arm.model_version_id].requests,
            "errors": latency[arm.model_version_id].errors,
            "error_rate": latency[arm.model_version_id].error_rate,
            "p50_ms": latency[arm.model_version_id].p50_ms,
            "p99_ms": latency[arm.model_version_id].p99_ms,
            "p99_breached": arm.model_version_id in p99_breaches,
        }
        for arm in arms
    ]
    return ABTestReadout.objects.create(
        abtest=abtest,
        as_of=window.until,
        decision=decision,
        reason=reason,
        srm_p_value=engine["srm"]["p_value"],
        srm_invalid=bool(engine["srm"]["invalid"]),
        result={
            "engine": engine,
            "arms": arm_rows,
            "winner_version": winner,
            "window": {"since": window.since.isoformat(), "until": window.until.isoformat()},
        },
    )


@transaction.atomic
def abtest_readout_compute(
    *, abtest: ABTest, actor: AbstractBaseUser | None, until: datetime | None = None
) -> ABTestReadout:
    """A readout as of now (or `until`), continuing the sequential analysis from the last one (editors;
    actor=None is beat's periodic readout and the demo command)."""
    abtest = _lock(abtest)
    _require_editor(actor, abtest.deployment)
    return _readout(abtest, selectors.arms(abtest), until=until)


# ------------------------------------------------------------------------------------------ promotion


def _readout_summary(abtest: ABTest, latest: ABTestReadout, path: str) -> str:
    lines = [
        f"A/B test #{abtest.pk} {abtest.name!r} on {abtest.deployment.name}: {latest.decision}.",
        f"Reason: {latest.reason}",
        f"SRM p-value: {latest.srm_p_value if latest.srm_p_value is not None else 'n/a'}.",
    ]
    for arm in latest.result.get("arms", []):
        mean = "n/a" if arm["mean"] is None else f"{arm['mean']:.4g}"
        lines.append(f"{arm['label']} ({arm['name']}): {arm['assigned']} assigned, {abtest.primary_metric} {mean}.")
    lines.append(f"Readout #{latest.pk}: {path}")
    return "\n".join(lines)


@transaction.atomic
def abtest_promote_winner(*, abtest: ABTest, actor: AbstractBaseUser, comment: str = "") -> PromotionRequest:
    """Open a registry promotion request (four eyes) to production for the winner, the readout in its comment."""
    abtest = _lock(abtest)
    require_project_role(actor, abtest.deployment.project, ProjectRole.EDITOR)
    latest = selectors.latest_readout(abtest)
    control = selectors.arms(abtest)[0].model_version_id
    if abtest.status == ABTestStatus.STOPPED:
        winner_id = abtest.winner_id
    elif latest is not None and latest.decision == Decision.TREATMENT_WINS:
        winner_id = latest.result.get("winner_version")
    else:
        winner_id = None
    if latest is None or winner_id is None or winner_id == control:
        decided = abtest.decision or (latest.decision if latest is not None else "no readout yet")
        raise Conflict(f"A/B test {abtest.name} has no treatment that won to promote ({decided}).")
    winner = ModelVersion.objects.select_related("model__project").get(pk=winner_id)
    if winner.stage == ModelVersionStage.PRODUCTION:
        raise Conflict(f"{winner} is already in production.")
    summary = _readout_summary(abtest, latest, reverse("abtests:abtest-detail", args=[abtest.pk]))
    request = promotion_request_create(
        version=winner,
        actor=actor,
        target_stage=ModelVersionStage.PRODUCTION,
        comment="\n\n".join(part for part in (comment.strip(), summary) if part),
    )
    abtest.promotion_request = request
    abtest.save(update_fields=["promotion_request", "updated_at"])
    audit_record(
        actor=actor,
        action="abtest.winner_promotion_requested",
        obj=abtest,
        project=abtest.deployment.project,
        after={"promotion_request": request.pk, "version": winner.pk, "readout": latest.pk},
    )
    return request


def abtest_readouts_refresh() -> int:
    """A readout of every running test (beat); a test whose readout fails is logged and the others go on."""
    done = 0
    for abtest in ABTest.objects.filter(status=ABTestStatus.RUNNING).order_by("pk"):
        try:
            abtest_readout_compute(abtest=abtest, actor=None)
        except (Conflict, ValidationError):
            logger.exception("readout of A/B test %s failed", abtest.pk)
            continue
        done += 1
    return done
