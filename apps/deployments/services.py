"""Use cases of deployments: create, roll out (blue-green, canary, shadow, direct), promote, roll back, scale,
reconcile with the backend, and ingest prediction events.

Every change of the desired state locks the deployment row, checks the generation the caller read (a stale
one is a conflict), bumps the generation, writes a `DeploymentEvent` and the audit log, and queues the
reconciler after commit. The reconciler claims a deployment with a lease (`filter(...).update(...)`), so two
reconcilers never act on one deployment at once; it drives the strategy forward from what it observed.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from apps.core.choices import ProjectRole
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.core.services import artifact_verified_path, audit_record
from apps.deployments import selectors
from apps.deployments.backends import get_backend, max_replicas
from apps.deployments.choices import (
    DeploymentBackendKind,
    DeploymentEnvironment,
    DeploymentEventKind,
    DeploymentStatus,
    DeploymentStrategy,
    RolloutPhase,
)
from apps.deployments.models import NAME_PATTERN, Deployment, DeploymentEvent, DeploymentTarget, PredictionLog
from apps.registry.choices import ModelVersionStage, PromotionRequestStatus
from apps.registry.models import ModelVersion, PromotionRequest, RegisteredModel
from worker.deployments.analysis import CanaryAction, CanaryThresholds, canary_decide
from worker.deployments.autoscale import AutoscalePolicy, autoscale_decide
from worker.deployments.spec import BackendError, DeploymentSpec, ObservedState, ReplicaHealth, VersionSpec

logger = logging.getLogger(__name__)

# The reconciler's claim on a deployment; longer than the task's hard time limit, so a claim held by a
# killed worker expires on its own.
RECONCILE_LEASE_SECONDS = 660
# Rounds of apply → observe → advance the strategy in one reconcile (a blue-green switch needs three).
RECONCILE_ROUNDS = 4
MAX_EVENTS_PER_BATCH = 5000
INGEST_BATCH_SIZE = 500
KEPT_DECISIONS = 50
AUTOSCALE_WINDOW_SECONDS = 60
ACTIVE_PHASES = {RolloutPhase.STARTING, RolloutPhase.SWITCHING, RolloutPhase.ANALYSING, RolloutPhase.MIRRORING}


class DeploymentConflict(Exception):
    """The deployment changed since the caller read it, or its state does not allow this (API: 409)."""


class DeploymentGateError(Exception):
    """A production deployment without an approved version (API: 403); `field` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# ------------------------------------------------------------------------------------------ helpers


def _require_editor(actor: AbstractBaseUser | None, project: Project) -> None:
    # actor=None is the system (the reconciler, the approval hook, a pipeline without a user).
    if actor is not None:
        require_project_role(actor, project, ProjectRole.EDITOR)


def _lock(deployment: Deployment) -> Deployment:
    return Deployment.objects.select_for_update().select_related("project", "registered_model").get(pk=deployment.pk)


def _require_running(deployment: Deployment) -> None:
    if deployment.status == DeploymentStatus.STOPPED:
        raise DeploymentConflict(f"Deployment {deployment.name} is stopped; start it first.")


def _check_generation(deployment: Deployment, expected: int | None) -> None:
    if expected is not None and int(expected) != deployment.generation:
        raise DeploymentConflict(
            f"Deployment {deployment.name} changed: it is at generation {deployment.generation}, your change was "
            f"based on generation {expected}. Reload it and try again."
        )


def _event(
    deployment: Deployment,
    kind: str,
    message: str,
    *,
    data: Mapping[str, Any] | None = None,
    actor: AbstractBaseUser | None = None,
    audit: bool = True,
) -> DeploymentEvent:
    event = DeploymentEvent.objects.create(
        deployment=deployment,
        kind=kind,
        message=message,
        data=dict(data or {}),
        generation=deployment.generation,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
    )
    if audit:
        audit_record(
            actor=actor,
            action=f"deployment.{kind}",
            obj=deployment,
            project=deployment.project,
            after={"generation": deployment.generation, **dict(data or {})},
            message=message,
        )
    return event


def _queue_reconcile(deployment: Deployment) -> None:
    from apps.deployments.tasks import deployment_reconcile_task

    deployment_id = deployment.pk
    transaction.on_commit(lambda: deployment_reconcile_task.delay(deployment_id))


def _save_desired(deployment: Deployment, fields: Iterable[str]) -> None:
    deployment.generation += 1
    deployment.save(update_fields=[*fields, "generation", "updated_at"])
    _queue_reconcile(deployment)


def _snapshot(deployment: Deployment) -> dict[str, Any]:
    live, shadow = selectors.deployment_targets(deployment)
    return {
        "traffic": [{"model_version": t.model_version_id, "weight": t.weight} for t in live],
        "shadow": shadow.model_version_id if shadow else None,
    }


def _set_targets(deployment: Deployment, live: list[tuple[ModelVersion | int, int]], shadow: Any = None) -> None:
    DeploymentTarget.objects.filter(deployment=deployment).delete()
    for position, (version, weight) in enumerate(live):
        version_id = version if isinstance(version, int) else version.pk
        DeploymentTarget.objects.create(
            deployment=deployment, model_version_id=version_id, weight=weight, position=position
        )
    if shadow is not None:
        DeploymentTarget.objects.create(
            deployment=deployment,
            model_version_id=shadow if isinstance(shadow, int) else shadow.pk,
            shadow=True,
            position=0,
        )


def _traffic_text(live: list[tuple[Any, int]]) -> str:
    def name(version: Any) -> str:
        if isinstance(version, ModelVersion):
            return f"v{version.number}"
        number = ModelVersion.objects.filter(pk=version).values_list("number", flat=True).first()
        return f"v{number}"

    return ", ".join(f"{name(v)} {w}%" for v, w in live)


def _validate_replicas(kind: str, replicas: int | None, field: str = "replicas") -> None:
    if replicas is None:
        return
    highest = max_replicas(kind)
    if not 1 <= int(replicas) <= highest:
        raise ValidationError({field: f"Must be between 1 and {highest} for the {kind} backend, not {replicas}."})


def _validate_autoscale(kind: str, minimum: int | None, maximum: int | None) -> None:
    if (minimum is None) != (maximum is None):
        raise ValidationError({"autoscale_min": "Give both autoscale_min and autoscale_max, or neither."})
    if minimum is None:
        return
    _validate_replicas(kind, minimum, "autoscale_min")
    _validate_replicas(kind, maximum, "autoscale_max")
    if minimum > maximum:
        raise ValidationError({"autoscale_max": f"Must be at least autoscale_min ({minimum})."})


def deployment_gate_check(*, environment: str, version: ModelVersion) -> None:
    """Production takes only a version in the production stage or with an approved request to production."""
    if environment != DeploymentEnvironment.PRODUCTION or version.stage == ModelVersionStage.PRODUCTION:
        return
    approved = PromotionRequest.objects.filter(
        version=version, target_stage=ModelVersionStage.PRODUCTION, status=PromotionRequestStatus.APPROVED
    ).exists()
    if approved:
        return
    stage = "no stage" if version.stage == ModelVersionStage.NONE else f"stage {version.get_stage_display()}"
    pending = PromotionRequest.objects.filter(
        version=version, target_stage=ModelVersionStage.PRODUCTION, status=PromotionRequestStatus.OPEN
    ).exists()
    next_step = (
        "Its promotion request to production awaits an approver."
        if pending
        else "Request a promotion to production in the registry."
    )
    raise DeploymentGateError(
        "model_version",
        f"{version} is in {stage}: a production deployment needs a version in the production stage or with an "
        f"approved promotion request to production. {next_step}",
    )


def _version_of(model: RegisteredModel, version: ModelVersion | int, field: str = "model_version") -> ModelVersion:
    version_id = version if isinstance(version, int) else version.pk
    found = ModelVersion.objects.filter(pk=version_id, model=model).select_related("model").first()
    if found is None:
        raise ValidationError({field: f"Model {model.name} has no version with id {version_id}."})
    if found.stage == ModelVersionStage.ARCHIVED:
        raise ValidationError({field: f"{found} is archived; pick a current version."})
    return found


def _validate_traffic(model: RegisteredModel, traffic: list[Mapping[str, Any]]) -> list[tuple[ModelVersion, int]]:
    if not traffic:
        raise ValidationError({"traffic": "Give at least one model version with a weight."})
    live = []
    for index, entry in enumerate(traffic):
        weight = entry.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ValidationError({"traffic": f"traffic[{index}].weight must be an integer from 0 to 100."})
        live.append((_version_of(model, int(entry["model_version"]), "traffic"), weight))
    total = sum(weight for _, weight in live)
    if total != 100:
        raise ValidationError({"traffic": f"Weights must sum to 100, not {total}."})
    if len({v.pk for v, _ in live}) != len(live):
        raise ValidationError({"traffic": "A model version appears twice."})
    return live


# ------------------------------------------------------------------------------------------ create


@transaction.atomic
def deployment_create(
    *,
    project: Project,
    name: str,
    actor: AbstractBaseUser | None,
    model_version: ModelVersion | None = None,
    traffic: list[Mapping[str, Any]] | None = None,
    backend: str | None = None,
    environment: str = DeploymentEnvironment.STAGING,
    replicas: int = 1,
    autoscale_min: int | None = None,
    autoscale_max: int | None = None,
    auto_deploy_on_approval: bool = False,
    strategy: str = DeploymentStrategy.DIRECT,
) -> Deployment:
    """A new deployment serving one version (100%) or an explicit traffic split. `strategy` is the one later
    rollouts default to (the approval hook's)."""
    import re

    _require_editor(actor, project)
    name = (name or "").strip()
    if not re.match(NAME_PATTERN, name):
        raise ValidationError({"name": "Use 1–40 lower-case letters, digits and '-', starting with a letter or digit."})
    if Deployment.objects.filter(name=name).exists():
        raise ValidationError({"name": f"A deployment named {name!r} exists (names are unique across the console)."})
    backend = backend or settings.DEPLOYMENTS_DEFAULT_BACKEND
    if backend not in DeploymentBackendKind.values:
        raise ValidationError({"backend": f"Choose one of {', '.join(DeploymentBackendKind.values)}."})
    if environment not in DeploymentEnvironment.values:
        raise ValidationError({"environment": f"Choose one of {', '.join(DeploymentEnvironment.values)}."})
    if strategy not in DeploymentStrategy.values:
        raise ValidationError({"strategy": f"Choose one of {', '.join(DeploymentStrategy.values)}."})
    _validate_replicas(backend, replicas)
    _validate_autoscale(backend, autoscale_min, autoscale_max)
    if model_version is not None:
        if model_version.model.project_id != project.pk:
            raise ValidationError({"model_version": f"{model_version} is not in project {project.slug}."})
        traffic = [{"model_version": model_version.pk, "weight": 100}]
    if not traffic:
        raise ValidationError({"model_version": "Give a model version (or a traffic split) to deploy."})
    first = ModelVersion.objects.filter(pk=int(traffic[0]["model_version"]), model__project=project).first()
    if first is None:
        raise ValidationError({"model_version": "Unknown model version in this project."})
    live = _validate_traffic(first.model, traffic)
    for version, weight in live:
        if weight:
            deployment_gate_check(environment=environment, version=version)
    salt = secrets.token_hex(16)
    deployment = Deployment(
        project=project,
        name=name,
        registered_model=first.model,
        environment=environment,
        backend=backend,
        replicas=autoscale_min if autoscale_min is not None else replicas,
        autoscale_min=autoscale_min,
        autoscale_max=autoscale_max,
        auto_deploy_on_approval=auto_deploy_on_approval,
        strategy=strategy,
        ingest_token_salt=salt,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    deployment.ingest_token_hash = Deployment.hash_token(deployment.ingest_token())
    deployment.save()
    _set_targets(deployment, live)
    _event(
        deployment,
        DeploymentEventKind.CREATED,
        f"Created on the {backend} backend: {_traffic_text(live)}.",
        data={"traffic": _snapshot(deployment)["traffic"], "backend": backend, "replicas": deployment.replicas},
        actor=actor,
    )
    _queue_reconcile(deployment)
    return deployment


# ------------------------------------------------------------------------------------------ rollouts


def _stable_target(deployment: Deployment) -> DeploymentTarget:
    live, _ = selectors.deployment_targets(deployment)
    return max(live, key=lambda t: (t.weight, -t.position))


def _canary_steps(traffic_percentage: int | None, steps: list[int] | None) -> list[int]:
    steps = sorted({int(s) for s in (steps or settings.DEPLOYMENTS_CANARY_STEPS)} | {100})
    if traffic_percentage is not None:
        if not 1 <= traffic_percentage <= 99:
            raise ValidationError({"traffic_percentage": "A canary starts with 1 to 99 percent of traffic."})
        steps = [traffic_percentage] + [s for s in steps if s > traffic_percentage]
    if steps[0] < 1 or steps[-1] != 100:
        raise ValidationError({"steps": "Canary steps are percentages from 1 to 100, ending at 100."})
    return steps


@transaction.atomic
def deployment_rollout(
    *,
    deployment: Deployment,
    model_version: ModelVersion | int,
    strategy: str,
    actor: AbstractBaseUser | None,
    expected_generation: int | None = None,
    traffic_percentage: int | None = None,
    steps: list[int] | None = None,
    analysis: Mapping[str, Any] | None = None,
) -> Deployment:
    """Start moving traffic to `model_version` with a strategy; the reconciler carries it through."""
    deployment = _lock(deployment)
    _require_editor(actor, deployment.project)
    _check_generation(deployment, expected_generation)
    if strategy not in DeploymentStrategy.values:
        raise ValidationError({"strategy": f"Choose one of {', '.join(DeploymentStrategy.values)}."})
    _require_running(deployment)
    if deployment.phase in ACTIVE_PHASES:
        raise DeploymentConflict(
            f"A {deployment.get_strategy_display()} rollout is in progress ({deployment.get_phase_display()}); "
            "promote or roll it back first."
        )
    version = _version_of(deployment.registered_model, model_version)
    deployment_gate_check(environment=deployment.environment, version=version)
    stable = _stable_target(deployment)
    if version.pk == stable.model_version_id:
        raise ValidationError({"model_version": f"{version} already takes {stable.weight}% of the traffic."})
    if strategy != DeploymentStrategy.CANARY and traffic_percentage is not None:
        raise ValidationError({"traffic_percentage": "Only a canary rollout takes a starting percentage."})
    analysis = dict(analysis or {})
    window_seconds = analysis.pop("window_seconds", None) or settings.DEPLOYMENTS_CANARY_WINDOW_SECONDS
    unknown = sorted(set(analysis) - set(CanaryThresholds.__dataclass_fields__))
    if unknown:
        raise ValidationError({"analysis": f"Unknown analysis setting(s): {', '.join(unknown)}."})
    try:
        window_seconds = int(window_seconds)
    except (TypeError, ValueError):
        raise ValidationError({"analysis": "window_seconds must be an integer."}) from None
    try:
        thresholds = CanaryThresholds.from_dict({"min_requests": settings.DEPLOYMENTS_CANARY_MIN_REQUESTS, **analysis})
    except ValueError as exc:
        raise ValidationError({"analysis": str(exc)}) from exc
    if window_seconds < 1:
        raise ValidationError({"analysis": "window_seconds must be at least 1."})
    deployment.rollback_spec = _snapshot(deployment)
    state: dict[str, Any] = {"from_version": stable.model_version_id, "to_version": version.pk}
    if strategy == DeploymentStrategy.DIRECT:
        _set_targets(deployment, [(version, 100)])
        phase = RolloutPhase.DONE
    elif strategy == DeploymentStrategy.BLUE_GREEN:
        # Green loads beside blue with no traffic; the switch comes once every replica serves both.
        _set_targets(deployment, [(stable.model_version_id, 100), (version, 0)])
        phase = RolloutPhase.STARTING
    elif strategy == DeploymentStrategy.CANARY:
        canary_steps = _canary_steps(traffic_percentage, steps)
        _set_targets(deployment, [(stable.model_version_id, 100 - canary_steps[0]), (version, canary_steps[0])])
        state.update(
            steps=canary_steps,
            step=0,
            window_seconds=window_seconds,
            thresholds=thresholds.to_dict(),
            window_started_at=None,
            failures=0,
            decisions=[],
        )
        phase = RolloutPhase.ANALYSING
    else:
        live, _ = selectors.deployment_targets(deployment)
        _set_targets(deployment, [(t.model_version_id, t.weight) for t in live], shadow=version)
        state["started_at"] = timezone.now().isoformat()
        phase = RolloutPhase.MIRRORING
    deployment.strategy, deployment.phase, deployment.strategy_state = strategy, phase, state
    deployment.status = DeploymentStatus.PROGRESSING
    deployment.status_message = ""
    _save_desired(deployment, ["rollback_spec", "strategy", "phase", "strategy_state", "status", "status_message"])
    _event(
        deployment,
        DeploymentEventKind.ROLLOUT_STARTED,
        f"{DeploymentStrategy(strategy).label} rollout of {version} started: {_traffic_text(_live_pairs(deployment))}"
        + (" (shadow)" if strategy == DeploymentStrategy.SHADOW else ""),
        data={"strategy": strategy, "to_version": version.pk, "state": state},
        actor=actor,
    )
    return deployment


def _live_pairs(deployment: Deployment) -> list[tuple[int, int]]:
    live, _ = selectors.deployment_targets(deployment)
    return [(t.model_version_id, t.weight) for t in live]


@transaction.atomic
def deployment_set_traffic(
    *,
    deployment: Deployment,
    traffic: list[Mapping[str, Any]],
    actor: AbstractBaseUser | None,
    expected_generation: int | None = None,
    shadow_model_version: int | None = None,
) -> Deployment:
    """Set the split by hand (A/B tests, a manual canary); the current state becomes the rollback target."""
    deployment = _lock(deployment)
    _require_editor(actor, deployment.project)
    _check_generation(deployment, expected_generation)
    _require_running(deployment)
    if deployment.phase in ACTIVE_PHASES:
        raise DeploymentConflict("A rollout is in progress; promote or roll it back first.")
    live = _validate_traffic(deployment.registered_model, traffic)
    for version, weight in live:
        if weight:
            deployment_gate_check(environment=deployment.environment, version=version)
    shadow = (
        _version_of(deployment.registered_model, shadow_model_version, "shadow_model_version")
        if (shadow_model_version is not None)
        else None
    )
    if shadow is not None and shadow.pk in {v.pk for v, _ in live}:
        raise ValidationError({"shadow_model_version": "The shadow must not also take live traffic."})
    deployment.rollback_spec = _snapshot(deployment)
    _set_targets(deployment, live, shadow=shadow)
    deployment.strategy, deployment.phase, deployment.strategy_state = DeploymentStrategy.DIRECT, RolloutPhase.DONE, {}
    _save_desired(deployment, ["rollback_spec", "strategy", "phase", "strategy_state"])
    _event(
        deployment,
        DeploymentEventKind.TRAFFIC_CHANGED,
        f"Traffic set to {_traffic_text(live)}" + (f", shadow {shadow}" if shadow else "") + ".",
        data=_snapshot(deployment),
        actor=actor,
    )
    return deployment


def _canary_advance(deployment: Deployment, *, actor: AbstractBaseUser | None, reason: str) -> None:
    """Move a locked canary deployment to its next step (or finish at 100%)."""
    state = dict(deployment.strategy_state)
    step = int(state["step"]) + 1
    stable, canary = int(state["from_version"]), int(state["to_version"])
    if step >= len(state["steps"]) or state["steps"][step] >= 100:
        _set_targets(deployment, [(canary, 100)])
        state["step"] = len(state["steps"]) - 1
        deployment.phase = RolloutPhase.DONE
        message = f"Canary promoted to 100% ({reason})."
        kind = DeploymentEventKind.PROMOTED
    else:
        percent = int(state["steps"][step])
        _set_targets(deployment, [(stable, 100 - percent), (canary, percent)])
        state.update(step=step, window_started_at=None, failures=0)
        message = f"Canary moved to {percent}% ({reason})."
        kind = DeploymentEventKind.TRAFFIC_CHANGED
    deployment.strategy_state = state
    # A pause (or hold) belonged to the step just left: the new one starts without it.
    deployment.status, deployment.status_message = DeploymentStatus.PROGRESSING, ""
    _save_desired(deployment, ["strategy_state", "phase", "status", "status_message"])
    _event(deployment, kind, message, data={"step": state["step"], "traffic": _snapshot(deployment)}, actor=actor)


@transaction.atomic
def deployment_promote(
    *, deployment: Deployment, actor: AbstractBaseUser | None, expected_generation: int | None = None
) -> Deployment:
    """Move the current rollout forward by hand: the next canary step, the blue-green switch, the shadow live."""
    deployment = _lock(deployment)
    _require_editor(actor, deployment.project)
    _check_generation(deployment, expected_generation)
    _require_running(deployment)
    state = dict(deployment.strategy_state)
    if deployment.phase == RolloutPhase.ANALYSING:
        _canary_advance(deployment, actor=actor, reason="promoted by hand")
    elif deployment.phase in {RolloutPhase.STARTING, RolloutPhase.SWITCHING}:
        _set_targets(deployment, [(int(state["to_version"]), 100)])
        deployment.phase = RolloutPhase.DONE
        _save_desired(deployment, ["phase"])
        _event(deployment, DeploymentEventKind.PROMOTED, "Blue-green switched by hand.", actor=actor)
    elif deployment.phase == RolloutPhase.MIRRORING:
        _, shadow = selectors.deployment_targets(deployment)
        version = shadow.model_version
        deployment_gate_check(environment=deployment.environment, version=version)
        deployment.rollback_spec = _snapshot(deployment)
        _set_targets(deployment, [(version, 100)])
        deployment.phase = RolloutPhase.DONE
        _save_desired(deployment, ["phase", "rollback_spec"])
        _event(deployment, DeploymentEventKind.PROMOTED, f"Shadow {version} promoted to 100%.", actor=actor)
    else:
        raise DeploymentConflict(f"Deployment {deployment.name} has no rollout in progress to promote.")
    return deployment


def _rollback_locked(
    deployment: Deployment, *, actor: AbstractBaseUser | None, reason: str, data: Mapping[str, Any] | None = None
) -> None:
    spec = deployment.rollback_spec
    if not spec:
        raise DeploymentConflict(f"Deployment {deployment.name} has no earlier healthy state to roll back to.")
    _set_targets(deployment, [(int(t["model_version"]), int(t["weight"])) for t in spec["traffic"]], spec["shadow"])
    before = deployment.phase
    deployment.phase = RolloutPhase.ROLLED_BACK
    deployment.rollback_spec = None
    deployment.strategy_state = {**deployment.strategy_state, "rolled_back": reason}
    deployment.status = DeploymentStatus.PROGRESSING
    deployment.status_message = f"Rolled back: {reason}"
    _save_desired(deployment, ["phase", "rollback_spec", "strategy_state", "status", "status_message"])
    _event(
        deployment,
        DeploymentEventKind.ROLLED_BACK,
        f"Rolled back to {_traffic_text(_live_pairs(deployment))}: {reason}",
        data={"from_phase": before, "restored": spec, **dict(data or {})},
        actor=actor,
    )


@transaction.atomic
def deployment_rollback(
    *, deployment: Deployment, actor: AbstractBaseUser | None, expected_generation: int | None = None, reason: str = ""
) -> Deployment:
    """Back to the desired state from before the last rollout or traffic change, in one step."""
    deployment = _lock(deployment)
    _require_editor(actor, deployment.project)
    _check_generation(deployment, expected_generation)
    _require_running(deployment)
    who = actor.get_username() if getattr(actor, "is_authenticated", False) else "the system"
    _rollback_locked(deployment, actor=actor, reason=reason or f"requested by {who}")
    return deployment


@transaction.atomic
def deployment_scale(
    *,
    deployment: Deployment,
    actor: AbstractBaseUser | None,
    replicas: int | None = None,
    autoscale_min: int | None = None,
    autoscale_max: int | None = None,
    autoscale: bool | None = None,
    expected_generation: int | None = None,
) -> Deployment:
    """Set a fixed replica count, or (autoscale=True) bounds for the autoscaler; autoscale=False turns it off."""
    deployment = _lock(deployment)
    _require_editor(actor, deployment.project)
    _check_generation(deployment, expected_generation)
    _require_running(deployment)
    before = {
        "replicas": deployment.replicas,
        "autoscale_min": deployment.autoscale_min,
        "autoscale_max": deployment.autoscale_max,
    }
    if autoscale:
        if autoscale_min is None and autoscale_max is None:
            raise ValidationError({"autoscale_min": "Autoscaling needs autoscale_min and autoscale_max."})
        _validate_autoscale(deployment.backend, autoscale_min, autoscale_max)
        deployment.autoscale_min, deployment.autoscale_max = autoscale_min, autoscale_max
        deployment.replicas = min(max(deployment.replicas, autoscale_min), autoscale_max)
    else:
        if replicas is None:
            raise ValidationError({"replicas": "Give the number of replicas."})
        _validate_replicas(deployment.backend, replicas)
        deployment.replicas = replicas
        if autoscale is False or deployment.autoscaled:
            deployment.autoscale_min = deployment.autoscale_max = None
    after = {
        "replicas": deployment.replicas,
        "autoscale_min": deployment.autoscale_min,
        "autoscale_max": deployment.autoscale_max,
    }
    _save_desired(deployment, ["replicas", "autoscale_min", "autoscale_max"])
    text = (
        f"autoscaling between {deployment.autoscale_min} and {deployment.autoscale_max} replicas"
        if deployment.autoscaled
        else f"{deployment.replicas} replicas"
    )
    _event(
        deployment,
        DeploymentEventKind.SCALED,
        f"Scaled to {text}.",
        data={"before": before, "after": after},
        actor=actor,
    )
    return deployment


@transaction.atomic
def deployment_note(*, deployment: Deployment, message: str) -> DeploymentEvent:
    """Something a person should know about, without a change of the desired state."""
    return _event(deployment, DeploymentEventKind.ERROR, message, audit=False)


@transaction.atomic
def deployment_stop(*, deployment: Deployment, actor: AbstractBaseUser | None) -> Deployment:
    """Shut the model servers down; the desired state is kept for a later start. Stopping twice changes nothing."""
    deployment = _lock(deployment)
    _require_editor(actor, deployment.project)
    if deployment.status == DeploymentStatus.STOPPED:
        return deployment
    deployment.status, deployment.status_message = DeploymentStatus.STOPPED, ""
    _save_desired(deployment, ["status", "status_message"])
    _event(deployment, DeploymentEventKind.STOPPED, "Stopped; its model servers are shut down.", actor=actor)
    return deployment


@transaction.atomic
def deployment_start(
    *, deployment: Deployment, actor: AbstractBaseUser | None, expected_generation: int | None = None
) -> Deployment:
    """Run a stopped deployment again, with the desired state it had when it stopped."""
    deployment = _lock(deployment)
    _require_editor(actor, deployment.project)
    _check_generation(deployment, expected_generation)
    if deployment.status != DeploymentStatus.STOPPED:
        raise DeploymentConflict(f"Deployment {deployment.name} is not stopped.")
    live, _ = selectors.deployment_targets(deployment)
    for target in live:
        deployment_gate_check(environment=deployment.environment, version=target.model_version)
    deployment.status, deployment.status_message = DeploymentStatus.PROGRESSING, ""
    _save_desired(deployment, ["status", "status_message"])
    _event(deployment, DeploymentEventKind.STARTED, "Started again; its model servers are coming up.", actor=actor)
    return deployment


# ------------------------------------------------------------------------------------------ reconcile


def ingest_url() -> str:
    return f"{settings.CONSOLE_INTERNAL_URL}/api/v1/ingest/predictions/"


def artifact_base_url() -> str:
    return f"{settings.CONSOLE_INTERNAL_URL}/api/v1/ingest/artifacts/"


def deployment_spec(deployment: Deployment, *, verify: bool = True, kubernetes: bool | None = None) -> DeploymentSpec:
    """The engine's spec of the desired state. `verify` checks every artifact's sha256 (on changes only);
    `kubernetes` (by default: the deployment's backend is Kubernetes) has pods fetch artifacts from the console."""
    if kubernetes is None:
        kubernetes = deployment.backend == DeploymentBackendKind.KUBERNETES
    live, shadow = selectors.deployment_targets(deployment)
    known = {}
    if not verify and deployment.applied_spec:
        applied = [*deployment.applied_spec.get("versions", []), deployment.applied_spec.get("shadow")]
        known = {v["sha256"]: v["artifact_path"] for v in applied if v}

    def version_spec(target: DeploymentTarget) -> VersionSpec:
        version = target.model_version
        if kubernetes:
            path = version.sha256  # fetched by the pod's init container
        else:
            path = known.get(version.sha256) or str(
                artifact_verified_path(sha256=version.sha256, project=deployment.project, obj=version)
            )
        return VersionSpec(
            version.pk, f"v{version.number}", path, version.sha256, 0 if target.shadow else target.weight
        )

    return DeploymentSpec(
        deployment_id=deployment.pk,
        name=deployment.name,
        versions=tuple(version_spec(t) for t in live),
        shadow=version_spec(shadow) if shadow else None,
        replicas=deployment.replicas,
        workers=settings.DEPLOYMENTS_SERVER_WORKERS,
        token=deployment.ingest_token(),
        console_url=ingest_url(),
        trust_pickle=settings.REGISTRY_TRUST_PICKLE,
        autoscale_min=deployment.autoscale_min if kubernetes else None,
        autoscale_max=deployment.autoscale_max if kubernetes else None,
        image=settings.DEPLOYMENTS_KUBE_IMAGE,
        namespace=settings.DEPLOYMENTS_KUBE_NAMESPACE,
        artifact_base_url=artifact_base_url() if kubernetes else "",
        labels={"mlops-console/project": deployment.project.slug},
    )


def deployment_manifests(deployment: Deployment) -> str:
    """Kubernetes manifests of the desired state as multi-document YAML, for GitOps (no Secret: the ingest
    token is created out of band). Artifacts are fetched from the console, whatever backend runs it now."""
    from apps.deployments.backends import kubernetes_options
    from worker.deployments.kube import export_yaml, render_manifests

    spec = deployment_spec(deployment, verify=False, kubernetes=True)
    return export_yaml(render_manifests(spec, kubernetes_options(), include_secret=False))


def deployment_reconcile(*, deployment_id: int) -> str:
    """Make the backend match the deployment and record what runs. Returns what happened (for logs and tests)."""
    now = timezone.now()
    claimed = (
        Deployment.objects.filter(pk=deployment_id)
        .filter(Q(reconcile_lease_until__isnull=True) | Q(reconcile_lease_until__lt=now))
        .update(reconcile_lease_until=now + timedelta(seconds=RECONCILE_LEASE_SECONDS))
    )
    if not claimed:
        return "busy"
    try:
        outcome = "unchanged"
        for _ in range(RECONCILE_ROUNDS):
            outcome, advanced = _reconcile_round(deployment_id)
            if not advanced:
                break
        return outcome
    finally:
        Deployment.objects.filter(pk=deployment_id).update(reconcile_lease_until=None)


def _reconcile_round(deployment_id: int) -> tuple[str, bool]:
    deployment = Deployment.objects.select_related("project", "registered_model").get(pk=deployment_id)
    try:
        backend = get_backend(deployment.backend)
    except Exception as exc:  # no docker engine, no kubeconfig: the deployment says so instead of the task failing
        _record(deployment_id, generation=None, spec=None, observed=None, error=f"backend unavailable: {exc}")
        return "failed", False
    if deployment.status == DeploymentStatus.STOPPED:
        if deployment.observed.get("replicas"):
            backend.delete(deployment.name)
            Deployment.objects.filter(pk=deployment_id).update(observed={}, observed_at=timezone.now())
            return "stopped", False
        return "unchanged", False
    _autoscale(deployment)
    deployment.refresh_from_db()
    generation = deployment.generation
    try:
        spec = deployment_spec(deployment, verify=deployment.applied_generation != generation)
    except Exception as exc:  # a missing or tampered artifact: nothing can be applied
        _record(deployment_id, generation=None, spec=None, observed=None, error=f"cannot build the spec: {exc}")
        return "failed", False
    error, before = None, None
    try:
        before = backend.observe(deployment.name)
        observed = backend.apply(spec)
    except BackendError as exc:
        error = str(exc)
        observed = backend.observe(deployment.name)
    except Exception as exc:  # the engine's own failures (daemon or API server away) are the status too
        logger.exception("reconciling deployment %s failed", deployment.name)
        error = f"{type(exc).__name__}: {exc}"
        observed = ObservedState(name=deployment.name, detail=error)
    _record(deployment_id, generation=generation, spec=spec, observed=observed, error=error, before=before)
    if error is None and observed.serves(spec):
        return "applied", _advance_strategy(deployment_id, generation)
    return ("failed" if error else "progressing"), False


def _status_for(
    deployment: Deployment, spec: DeploymentSpec | None, observed: ObservedState | None, error: str | None
) -> str:
    if deployment.status == DeploymentStatus.STOPPED:
        return DeploymentStatus.STOPPED  # an error while shutting down is its message, not a new status
    ready = observed.ready_replicas if observed else 0
    if error:
        return DeploymentStatus.DEGRADED if ready else DeploymentStatus.FAILED
    if spec is not None and observed is not None and observed.serves(spec):
        if deployment.status == DeploymentStatus.PAUSED and deployment.phase == RolloutPhase.ANALYSING:
            return DeploymentStatus.PAUSED
        return DeploymentStatus.PROGRESSING if deployment.phase in ACTIVE_PHASES else DeploymentStatus.HEALTHY
    return DeploymentStatus.PROGRESSING if ready else DeploymentStatus.DEGRADED


@transaction.atomic
def _record(
    deployment_id: int,
    *,
    generation: int | None,
    spec: DeploymentSpec | None,
    observed: ObservedState | None,
    error: str | None,
    before: ObservedState | None = None,
) -> None:
    deployment = Deployment.objects.select_for_update().select_related("project").get(pk=deployment_id)
    status = _status_for(deployment, spec, observed, error)
    if before is not None:
        for replica in before.replicas:
            if replica.health == ReplicaHealth.DEAD:
                _event(
                    deployment,
                    DeploymentEventKind.REPLICA_DIED,
                    f"Replica {replica.replica} (pid {replica.pid or replica.container_id}) had stopped; restarted.",
                    data={"replica": replica.replica, "pid": replica.pid, "container_id": replica.container_id},
                    audit=False,
                )
    if generation is not None and error is None and deployment.applied_generation != generation:
        deployment.applied_generation = generation
        deployment.applied_spec = {**spec.to_dict(), "token": ""} if spec else None
        _event(
            deployment,
            DeploymentEventKind.RECONCILED,
            f"Applied generation {generation} on the {deployment.backend} backend: "
            f"{observed.ready_replicas if observed else 0} of {spec.replicas if spec else 0} replicas ready.",
            data={"traffic": spec.traffic() if spec else {}, "replicas": spec.replicas if spec else 0},
            audit=False,
        )
    message = error or (deployment.status_message if status == DeploymentStatus.PAUSED else "")
    if status != deployment.status or (error and message != deployment.status_message):
        kind = DeploymentEventKind.ERROR if error else DeploymentEventKind.HEALTH_CHANGED
        _event(
            deployment,
            kind,
            f"{DeploymentStatus(deployment.status).label} → {DeploymentStatus(status).label}"
            + (f": {error[:500]}" if error else ""),
            data={"from": deployment.status, "to": status},
            audit=bool(error) or status in {DeploymentStatus.FAILED, DeploymentStatus.DEGRADED},
        )
    deployment.status, deployment.status_message = status, message
    if observed is not None:
        deployment.observed = observed.to_dict()
    deployment.observed_at = timezone.now()
    # The token derives from SECRET_KEY: after a key rotation the servers got the new token in this apply,
    # and the stored hash must follow or their events would be refused.
    deployment.ingest_token_hash = Deployment.hash_token(deployment.ingest_token())
    deployment.save(
        update_fields=[
            "status",
            "status_message",
            "observed",
            "observed_at",
            "applied_generation",
            "applied_spec",
            "ingest_token_hash",
        ]
    )


@transaction.atomic
def _advance_strategy(deployment_id: int, generation: int) -> bool:
    """Move the rollout on once the backend serves its current step. True when the desired state changed."""
    deployment = (
        Deployment.objects.select_for_update().select_related("project", "registered_model").get(pk=deployment_id)
    )
    if deployment.generation != generation:
        return True  # someone changed it meanwhile; apply that first
    state = dict(deployment.strategy_state)
    if deployment.phase in {RolloutPhase.STARTING, RolloutPhase.SWITCHING}:
        # Green is loaded and ready on every replica: switch all traffic and unload blue in one graceful
        # reload (the servers swap workers only once the new ones are ready, so no request fails).
        _set_targets(deployment, [(int(state["to_version"]), 100)])
        deployment.phase = RolloutPhase.DONE
        _save_desired(deployment, ["phase"])
        _event(
            deployment,
            DeploymentEventKind.PROMOTED,
            "Blue-green: the new version was up on every replica; all traffic switched to it, the old one unloaded.",
            data={"traffic": _snapshot(deployment)},
        )
        return True
    if deployment.phase == RolloutPhase.ANALYSING:
        return _canary_analyse(deployment, state)
    return False


def _canary_analyse(deployment: Deployment, state: dict[str, Any]) -> bool:
    now = timezone.now()
    if not state.get("window_started_at"):
        # The step is live on every replica from now on: its window starts here.
        state["window_started_at"] = now.isoformat()
        deployment.strategy_state = state
        deployment.save(update_fields=["strategy_state"])
        return False
    started = datetime.fromisoformat(state["window_started_at"])
    if (now - started).total_seconds() < int(state["window_seconds"]):
        return False
    stable_id, canary_id = int(state["from_version"]), int(state["to_version"])
    stats = selectors.version_window_stats(
        deployment=deployment, version_ids=[stable_id, canary_id], since=started, until=now
    )
    decision = canary_decide(
        stable=stats[stable_id],
        canary=stats[canary_id],
        thresholds=CanaryThresholds.from_dict(state.get("thresholds")),
        previous_failures=int(state.get("failures") or 0),
    )
    percent = state["steps"][int(state["step"])]
    record = {
        "at": now.isoformat(),
        "window_started_at": state["window_started_at"],
        "step": int(state["step"]),
        "percent": percent,
        **decision.to_dict(),
    }
    decisions = list(state.get("decisions", []))
    last = decisions[-1] if decisions else {}
    if (
        decision.action == CanaryAction.PAUSE
        and last.get("action") == CanaryAction.PAUSE
        and last.get("window_started_at") == record["window_started_at"]
    ):
        # Still waiting for data in the same window: the pause's row shows the latest numbers, and the history
        # keeps the one event that said it paused instead of one per reconcile.
        decisions[-1] = {**record, "paused_since": last.get("paused_since", last["at"])}
    else:
        decisions.append(record)
        _event(
            deployment,
            DeploymentEventKind.CANARY_DECISION,
            f"Canary at {percent}%: {decision.action} — {decision.reason}",
            data=record,
            audit=decision.action != CanaryAction.PAUSE,
        )
    state["decisions"] = decisions[-KEPT_DECISIONS:]
    state["failures"] = decision.consecutive_failures
    if decision.action == CanaryAction.PROMOTE:
        deployment.strategy_state = state
        deployment.status, deployment.status_message = DeploymentStatus.PROGRESSING, ""
        deployment.save(update_fields=["strategy_state", "status", "status_message"])
        _canary_advance(deployment, actor=None, reason=decision.reason)
        return True
    if decision.action == CanaryAction.ROLLBACK:
        deployment.strategy_state = state
        deployment.save(update_fields=["strategy_state"])
        _rollback_locked(deployment, actor=None, reason=f"canary analysis: {decision.reason}", data=record)
        return True
    if decision.action == CanaryAction.PAUSE:
        # Keep the window open: more traffic may still arrive. Never promote on missing data.
        deployment.status = DeploymentStatus.PAUSED
        deployment.status_message = f"Canary paused: {decision.reason}"
    else:
        state["window_started_at"] = now.isoformat()
        deployment.status = DeploymentStatus.PROGRESSING
        deployment.status_message = f"Canary holding: {decision.reason}"
    deployment.strategy_state = state
    deployment.save(update_fields=["strategy_state", "status", "status_message"])
    return False


def _autoscale(deployment: Deployment) -> None:
    """The local autoscaler (local and Docker backends; Kubernetes has its HPA)."""
    if not deployment.autoscaled or deployment.backend == DeploymentBackendKind.KUBERNETES:
        return
    policy = AutoscalePolicy(
        min_replicas=deployment.autoscale_min,
        max_replicas=deployment.autoscale_max,
        target_rps_per_replica=settings.DEPLOYMENTS_AUTOSCALE_TARGET_RPS,
        cooldown_seconds=settings.DEPLOYMENTS_AUTOSCALE_COOLDOWN_SECONDS,
    )
    rate = selectors.request_rate(deployment=deployment, seconds=AUTOSCALE_WINDOW_SECONDS)
    since = (timezone.now() - deployment.last_scaled_at).total_seconds() if deployment.last_scaled_at else None
    decision = autoscale_decide(
        policy=policy, current_replicas=deployment.replicas, request_rate=rate, seconds_since_last_change=since
    )
    if not decision.changed:
        return
    with transaction.atomic():
        locked = _lock(deployment)
        if locked.replicas != deployment.replicas or not locked.autoscaled:
            return
        locked.replicas, locked.last_scaled_at = decision.replicas, timezone.now()
        _save_desired(locked, ["replicas", "last_scaled_at"])
        _event(locked, DeploymentEventKind.AUTOSCALED, f"Autoscaled: {decision.reason}.", data=decision.to_dict())


def deployments_to_reconcile() -> list[int]:
    """Every deployment not stopped, and stopped ones whose servers may still run."""
    running = ~Q(status=DeploymentStatus.STOPPED) | ~Q(observed={})
    return list(Deployment.objects.filter(running).order_by("pk").values_list("pk", flat=True))


# ------------------------------------------------------------------------------------------ ingest


def _text(value: Any, limit: int) -> str:
    return str(value)[:limit] if value is not None else ""


def _input_rows(inputs: Any, index: int) -> list[dict] | None:
    """One object per row from an event's inputs, which model servers ship by column: `{"x1": [..], ..}`."""
    if inputs is None:
        return None
    if (
        not isinstance(inputs, dict)
        or not all(isinstance(values, list) for values in inputs.values())
        or len({len(values) for values in inputs.values()}) > 1
    ):
        raise ValidationError({"events": f"events[{index}].inputs must be an object of equal-length column lists."})
    names = list(inputs)
    return [dict(zip(names, values, strict=True)) for values in zip(*inputs.values(), strict=True)]


def predictions_ingest(*, deployment: Deployment, events: Any) -> int:
    """Bulk-insert prediction events shipped by the deployment's model servers. Returns how many were taken.

    Events of another deployment (a misconfigured server) are ignored; a re-sent batch is not counted twice
    (`ignore_conflicts` on the unique request id).
    """
    if not isinstance(events, list):
        raise ValidationError({"events": "Must be a list of prediction events."})
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise ValidationError({"events": f"At most {MAX_EVENTS_PER_BATCH} events per request."})
    now = timezone.now()
    rows = []
    for index, event in enumerate(events):
        if not isinstance(event, dict) or not event.get("request_id"):
            raise ValidationError({"events": f"events[{index}] must be an object with a request_id."})
        if str(event.get("deployment_id")) != str(deployment.pk):
            continue
        created = parse_datetime(str(event.get("timestamp") or "")) or now
        version_id = event.get("version_id")
        try:
            status = int(event.get("status") or 0)
            latency = float(event["latency_ms"]) if event.get("latency_ms") is not None else None
        except (TypeError, ValueError):
            raise ValidationError({"events": f"events[{index}] has a non-numeric status or latency_ms."}) from None
        rows.append(
            PredictionLog(
                deployment=deployment,
                model_version_id=int(version_id) if str(version_id or "").isdigit() else None,
                request_id=_text(event["request_id"], 64),
                shadow=bool(event.get("shadow")),
                inputs=_input_rows(event.get("inputs"), index),
                outputs=event.get("outputs"),
                probabilities=event.get("probabilities"),
                latency_ms=latency,
                status=max(0, min(status, 999)),
                error=_text(event.get("error"), 2000),
                request_key=_text(event.get("request_key"), 200),
                created_at=created if timezone.is_aware(created) else timezone.make_aware(created),
            )
        )
    try:
        PredictionLog.objects.bulk_create(rows, batch_size=INGEST_BATCH_SIZE, ignore_conflicts=True)
    except IntegrityError as exc:  # a deployment deleted while its servers still ship
        raise DeploymentConflict(str(exc)) from None
    return len(rows)


def deployment_for_token(token: str) -> Deployment | None:
    if not token:
        return None
    return (
        Deployment.objects.select_related("project", "registered_model")
        .filter(ingest_token_hash=Deployment.hash_token(token))
        .first()
    )


def deployment_artifact_allowed(*, deployment: Deployment, sha256: str) -> ModelVersion | None:
    """The version with this artifact, when the deployment serves it (a pod's init container fetches it)."""
    target = (
        DeploymentTarget.objects.filter(deployment=deployment, model_version__sha256=sha256)
        .select_related("model_version")
        .first()
    )
    return target.model_version if target else None
