"""Commands on deployments: create, roll out, set traffic, promote, roll back, scale, note, stop, start.

Every change of the desired state locks the deployment row, checks the generation the caller read (a stale
one is a conflict), bumps the generation, writes a `DeploymentEvent` and the audit log, and queues the
reconciler after commit.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from apps.core.choices import ProjectRole
from apps.core.exceptions import Conflict, PermissionDenied
from apps.core.models import Project
from apps.core.permissions import require_project_role
from apps.deployments import selectors
from apps.deployments.backends import max_replicas
from apps.deployments.choices import (
    DeploymentBackendKind,
    DeploymentEnvironment,
    DeploymentEventKind,
    DeploymentStatus,
    DeploymentStrategy,
    RolloutPhase,
)
from apps.deployments.models import Deployment, DeploymentEvent, DeploymentTarget
from apps.deployments.services._common import (
    ACTIVE_PHASES,
    _canary_advance,
    _event,
    _live_pairs,
    _lock,
    _queue_reconcile,
    _rollback_locked,
    _save_desired,
    _set_targets,
    _snapshot,
    _traffic_text,
)
from apps.registry.choices import ModelVersionStage, PromotionRequestStatus
from apps.registry.models import ModelVersion, PromotionRequest, RegisteredModel
from worker.deployments.analysis import CanaryThresholds
from worker.deployments.spec import NAME_RE


def _require_editor(actor: AbstractBaseUser | None, project: Project) -> None:
    # actor=None is the system (the reconciler, the approval hook, a pipeline without a user).
    if actor is not None:
        require_project_role(actor, project, ProjectRole.EDITOR)


def _require_running(deployment: Deployment) -> None:
    if deployment.status == DeploymentStatus.STOPPED:
        raise Conflict(f"Deployment {deployment.name} is stopped; start it first.")


def _check_generation(deployment: Deployment, expected: int | None) -> None:
    if expected is not None and int(expected) != deployment.generation:
        raise Conflict(
            f"Deployment {deployment.name} changed: it is at generation {deployment.generation}, your change was "
            f"based on generation {expected}. Reload it and try again."
        )


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


def deployment_gate_check(*, environment: str, version: ModelVersion, field: str = "model_version") -> None:
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
    raise PermissionDenied(
        f"{version} is in {stage}: a production deployment needs a version in the production stage or with an "
        f"approved promotion request to production. {next_step}",
        field=field,
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
    _require_editor(actor, project)
    name = (name or "").strip()
    if not NAME_RE.match(name):
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
        raise Conflict(
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
        raise Conflict("A rollout is in progress; promote or roll it back first.")
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
    if shadow is not None:
        # A shadow is loaded into the production server process and sees production requests: same gate.
        deployment_gate_check(environment=deployment.environment, version=shadow, field="shadow_model_version")
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
        raise Conflict(f"Deployment {deployment.name} has no rollout in progress to promote.")
    return deployment


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
        raise Conflict(f"Deployment {deployment.name} is not stopped.")
    live, shadow = selectors.deployment_targets(deployment)
    for target in [*live, *([shadow] if shadow else [])]:
        deployment_gate_check(environment=deployment.environment, version=target.model_version)
    deployment.status, deployment.status_message = DeploymentStatus.PROGRESSING, ""
    _save_desired(deployment, ["status", "status_message"])
    _event(deployment, DeploymentEventKind.STARTED, "Started again; its model servers are coming up.", actor=actor)
    return deployment
