"""Shared by the deployments' use cases: the row lock, events, the desired state's targets
and its save (which queues the reconciler), and the canary steps and rollback both commands and the
reconciler take.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from apps.core.exceptions import Conflict
from apps.core.queueing import enqueue_on_commit
from apps.core.services import audit_record
from apps.deployments import selectors
from apps.deployments.choices import DeploymentEventKind, DeploymentStatus, RolloutPhase
from apps.deployments.models import Deployment, DeploymentEvent, DeploymentTarget
from apps.registry.models import ModelVersion

ACTIVE_PHASES = {RolloutPhase.STARTING, RolloutPhase.SWITCHING, RolloutPhase.ANALYSING, RolloutPhase.MIRRORING}


def _lock(deployment: Deployment) -> Deployment:
    return Deployment.objects.select_for_update().select_related("project", "registered_model").get(pk=deployment.pk)


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

    # A lost send is taken over by the beat's deployments.reconcile_all, which reconciles every deployment.
    enqueue_on_commit(deployment_reconcile_task, deployment.pk)


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


def _live_pairs(deployment: Deployment) -> list[tuple[int, int]]:
    live, _ = selectors.deployment_targets(deployment)
    return [(t.model_version_id, t.weight) for t in live]


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


def _rollback_locked(
    deployment: Deployment, *, actor: AbstractBaseUser | None, reason: str, data: Mapping[str, Any] | None = None
) -> None:
    spec = deployment.rollback_spec
    if not spec:
        raise Conflict(f"Deployment {deployment.name} has no earlier healthy state to roll back to.")
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
