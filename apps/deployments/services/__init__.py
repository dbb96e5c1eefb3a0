"""Use cases of deployments: create, roll out (blue-green, canary, shadow, direct), promote, roll back, scale,
reconcile with the backend, and the look-ups of the model servers' tokens (prediction events go to
apps.telemetry).

Every change of the desired state locks the deployment row, checks the generation the caller read (a stale
one is a conflict), bumps the generation, writes a `DeploymentEvent` and the audit log, and queues the
reconciler after commit. The reconciler claims a deployment with a lease (`filter(...).update(...)`), so two
reconcilers never act on one deployment at once; it drives the strategy forward from what it observed.

Views, the API, tasks and commands import from here.
"""

from __future__ import annotations

from apps.deployments.services._common import ACTIVE_PHASES
from apps.deployments.services.commands import (
    deployment_create,
    deployment_gate_check,
    deployment_note,
    deployment_promote,
    deployment_rollback,
    deployment_rollout,
    deployment_scale,
    deployment_set_traffic,
    deployment_start,
    deployment_stop,
)
from apps.deployments.services.predict import PredictionAnswer, deployment_predict
from apps.deployments.services.reconcile import (
    AUTOSCALE_WINDOW_SECONDS,
    KEPT_DECISIONS,
    RECONCILE_LEASE_SECONDS,
    RECONCILE_ROUNDS,
    deployment_reconcile,
    deployments_to_reconcile,
)
from apps.deployments.services.spec import artifact_base_url, deployment_manifests, deployment_spec, ingest_url
from apps.deployments.services.tokens import deployment_artifact_allowed

__all__ = [
    "ACTIVE_PHASES",
    "AUTOSCALE_WINDOW_SECONDS",
    "KEPT_DECISIONS",
    "PredictionAnswer",
    "RECONCILE_LEASE_SECONDS",
    "RECONCILE_ROUNDS",
    "artifact_base_url",
    "deployment_artifact_allowed",
    "deployment_create",
    "deployment_gate_check",
    "deployment_manifests",
    "deployment_note",
    "deployment_predict",
    "deployment_promote",
    "deployment_reconcile",
    "deployment_rollback",
    "deployment_rollout",
    "deployment_scale",
    "deployment_set_traffic",
    "deployment_spec",
    "deployment_start",
    "deployment_stop",
    "deployments_to_reconcile",
    "ingest_url",
]
