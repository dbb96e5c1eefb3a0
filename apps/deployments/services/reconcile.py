"""The reconciler: make the backend match the deployment, record what runs, drive the strategy forward.

It claims a deployment with a lease (`filter(...).update(...)`), so two reconcilers never act on one
deployment at once; it drives the strategy forward from what it observed.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.deployments import selectors
from apps.deployments.backends import get_backend
from apps.deployments.choices import DeploymentBackendKind, DeploymentEventKind, DeploymentStatus, RolloutPhase
from apps.deployments.models import Deployment
from apps.deployments.services._common import (
    ACTIVE_PHASES,
    _canary_advance,
    _event,
    _lock,
    _rollback_locked,
    _save_desired,
    _set_targets,
    _snapshot,
)
from apps.deployments.services.spec import deployment_spec
from apps.telemetry import selectors as telemetry
from worker.deployments.analysis import CanaryAction, CanaryThresholds, canary_decide
from worker.deployments.autoscale import AutoscalePolicy, autoscale_decide
from worker.deployments.spec import BackendError, DeploymentSpec, ObservedState, ReplicaHealth, ReplicaState

logger = logging.getLogger(__name__)

# The reconciler's claim on a deployment; longer than the task's hard time limit, so a claim held by a
# killed worker expires on its own.
RECONCILE_LEASE_SECONDS = 660
# Rounds of apply → observe → advance the strategy in one reconcile (a blue-green switch needs three).
RECONCILE_ROUNDS = 4
KEPT_DECISIONS = 50
AUTOSCALE_WINDOW_SECONDS = 60


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
    error, before, refused = None, None, False
    try:
        before = backend.observe(deployment.name)
        observed = backend.apply(spec)
    except BackendError as exc:
        error, refused = str(exc), True
        observed = backend.observe(deployment.name)
    except Exception as exc:  # the engine's own failures (daemon or API server away) are the status too
        logger.exception("reconciling deployment %s failed", deployment.name)
        error = f"{type(exc).__name__}: {exc}"
        observed = ObservedState(name=deployment.name, detail=error)
    _record(deployment_id, generation=generation, spec=spec, observed=observed, error=error, before=before)
    if error is None and observed.serves(spec):
        return "applied", _advance_strategy(deployment_id, generation)
    if refused and _rollback_refused_rollout(deployment_id, generation, error):
        return "rolled back", True
    return ("failed" if error else "progressing"), False


@transaction.atomic
def _rollback_refused_rollout(deployment_id: int, generation: int, error: str) -> bool:
    """A rollout whose step the backend failed to apply (the candidate cannot load, its replicas crash or never
    get ready) is rolled back at once: applying the same spec again would fail again, and the version it came
    from was serving. True when it rolled back (the next round applies the restored state)."""
    deployment = (
        Deployment.objects.select_for_update().select_related("project", "registered_model").get(pk=deployment_id)
    )
    if deployment.generation != generation or deployment.phase not in ACTIVE_PHASES or not deployment.rollback_spec:
        return False
    reason = f"the backend could not apply the rollout: {error[:300]}"
    if deployment.phase == RolloutPhase.ANALYSING:
        state = dict(deployment.strategy_state)
        step = int(state.get("step") or 0)
        record = {
            "at": timezone.now().isoformat(),
            "window_started_at": state.get("window_started_at"),
            "step": step,
            "percent": state["steps"][step],
            "action": CanaryAction.ROLLBACK,
            "reason": reason,
            "consecutive_failures": 0,
            "numbers": {},
        }
        state["decisions"] = [*state.get("decisions", []), record][-KEPT_DECISIONS:]
        deployment.strategy_state = state
        deployment.save(update_fields=["strategy_state"])
        _event(
            deployment,
            DeploymentEventKind.CANARY_DECISION,
            f"Canary at {record['percent']}%: {CanaryAction.ROLLBACK} — {reason}",
            data=record,
        )
    _rollback_locked(deployment, actor=None, reason=reason, data={"error": error[:1000]})
    return True


def _replica_died(deployment: Deployment, replica: ReplicaState) -> None:
    """One event per death: a replica in a crash loop stays dead across reconciles until its deferred restart."""
    data = {"replica": replica.replica, "pid": replica.pid, "container_id": replica.container_id}
    last = deployment.events.filter(kind=DeploymentEventKind.REPLICA_DIED, data__replica=replica.replica).first()
    if last is not None and replica.crash_loop and all(last.data.get(key) == value for key, value in data.items()):
        return
    what = f"Replica {replica.replica} (pid {replica.pid or replica.container_id}) had stopped"
    if replica.crash_loop and replica.next_restart_at:
        until = datetime.fromtimestamp(replica.next_restart_at, tz=UTC)
        message = f"{what}; crash loop ({replica.restarts} restarts): restart deferred until {until:%H:%M:%S} UTC."
    else:
        message = f"{what}; restarted."
    _event(
        deployment,
        DeploymentEventKind.REPLICA_DIED,
        message,
        data={**data, "restarts": replica.restarts, "crash_loop": replica.crash_loop},
        audit=False,
    )


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


def replica_cpu_percent(observed: dict[str, Any], before: dict[str, Any], elapsed: float) -> dict[str, Any]:
    """`observed` with each replica's CPU use since the previous observation, in percent of one core.

    Backends report CPU seconds used since a server started; the rate needs two observations of the same
    process or container (same replica, pid and container id). The first observation of a process, and
    backends that do not measure, leave `cpu_percent` None."""

    def key(replica: dict[str, Any]) -> tuple:
        return replica.get("replica"), replica.get("pid"), replica.get("container_id")

    previous = {key(replica): replica.get("cpu_seconds") for replica in before.get("replicas", [])}
    for replica in observed.get("replicas", []):
        used, earlier = replica.get("cpu_seconds"), previous.get(key(replica))
        replica["cpu_percent"] = (
            round(100.0 * max(used - earlier, 0.0) / elapsed, 1)
            if used is not None and earlier is not None and elapsed > 0
            else None
        )
    return observed


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
                _replica_died(deployment, replica)
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
    now = timezone.now()
    if observed is not None:
        elapsed = (now - deployment.observed_at).total_seconds() if deployment.observed_at else 0.0
        deployment.observed = replica_cpu_percent(observed.to_dict(), deployment.observed or {}, elapsed)
    deployment.observed_at = now
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
    rate = telemetry.request_rate(deployment_id=deployment.pk, seconds=AUTOSCALE_WINDOW_SECONDS)
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
