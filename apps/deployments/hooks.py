"""How deployments plug into the registry and the pipelines (registered in DeploymentsConfig.ready).

- The registry's "promotion approved" event: a deployment with `auto_deploy_on_approval` for that model rolls
  out the newly approved production version with its strategy (queued as its own task; the handler is quick).
- The pipeline's `deploy` stage: `deployment_config: {name, strategy, replicas, backend, environment,
  traffic_percentage}` rolls the registered version out on the named deployment, creating it if needed.
- Telemetry's ingest API: a model server's bearer token is resolved to its deployment here, where tokens live.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError

from apps.core.queueing import enqueue_on_commit
from apps.deployments import services
from apps.deployments.choices import DeploymentStatus, DeploymentStrategy
from apps.deployments.models import Deployment
from apps.experiments.stages import StageContext, StageSkipped
from apps.registry.choices import ModelVersionStage, RegistryEventType
from apps.registry.models import ModelVersion
from apps.telemetry.services import IngestSource
from worker.deployments.spec import NAME_MAX_LENGTH, default_deployment_name

logger = logging.getLogger(__name__)

STAGE_CONFIG_KEYS = ("name", "strategy", "replicas", "backend", "environment", "traffic_percentage")


def ingest_source_for_token(token: str) -> IngestSource | None:
    """Telemetry's token resolver: the deployment whose model servers hold this token, its project and its
    model's versions (the only ones its events may name)."""
    # Every ingest request asks this, so it reads three ids, not the deployment row and its relations.
    found = (
        Deployment.objects.filter(ingest_token_hash=Deployment.hash_token(token))
        .values_list("pk", "project_id", "registered_model_id")
        .first()
    )
    if found is None:
        return None
    deployment_id, project_id, model_id = found
    versions = frozenset(ModelVersion.objects.filter(model_id=model_id).values_list("pk", flat=True))
    return IngestSource(deployment_id=deployment_id, project_id=project_id, version_ids=versions)


def registry_event_handler(event: Any) -> None:
    from apps.deployments.tasks import deployment_rollout_approved_task

    request = event.request
    if event.type != RegistryEventType.REQUEST_APPROVED or request is None:
        return
    if request.target_stage != ModelVersionStage.PRODUCTION or event.version_id is None:
        return
    followers = Deployment.objects.filter(registered_model_id=event.model_id, auto_deploy_on_approval=True).exclude(
        status=DeploymentStatus.STOPPED
    )
    for deployment_id in followers.values_list("pk", flat=True):
        enqueue_on_commit(deployment_rollout_approved_task, deployment_id, event.version_id)


def deployment_rollout_approved(*, deployment_id: int, model_version_id: int) -> str:
    """Idempotent: a version already live, or a rollout in progress, is left alone (and said so)."""
    deployment = Deployment.objects.get(pk=deployment_id)
    if deployment.targets.filter(model_version_id=model_version_id, shadow=False, weight__gt=0).exists():
        return "already serving"
    if deployment.phase in services.ACTIVE_PHASES:
        services.deployment_note(
            deployment=deployment,
            message=f"Version id {model_version_id} was approved, but a rollout is in progress; roll it out by hand.",
        )
        return "busy"
    strategy = deployment.strategy if deployment.strategy != DeploymentStrategy.SHADOW else DeploymentStrategy.CANARY
    services.deployment_rollout(deployment=deployment, model_version=model_version_id, strategy=strategy, actor=None)
    return "started"


def deploy_stage(context: StageContext) -> dict[str, Any]:
    """The pipeline's deploy stage (a `StageHandler`, see apps/experiments/stages.py)."""
    config = context.config
    if not config:
        raise StageSkipped("the pipeline has no deployment_config, so it deploys nothing")
    unknown = sorted(set(config) - set(STAGE_CONFIG_KEYS))
    if unknown:
        raise ValueError(
            f"deployment_config: unknown keys {', '.join(unknown)}; allowed: {', '.join(STAGE_CONFIG_KEYS)}"
        )
    registered = context.outputs.get("register") or {}
    if not registered.get("model_version_id"):
        raise StageSkipped("no model version was registered, so there is nothing to deploy")
    version = ModelVersion.objects.select_related("model__project").get(pk=registered["model_version_id"])
    name = str(config.get("name") or default_deployment_name(version.model.name))[:NAME_MAX_LENGTH]
    strategy = str(config.get("strategy") or DeploymentStrategy.DIRECT)
    actor = context.actor
    deployment = Deployment.objects.filter(name=name).first()
    if deployment is None:
        deployment = services.deployment_create(
            project=version.model.project,
            name=name,
            actor=actor,
            model_version=version,
            backend=config.get("backend"),
            environment=str(config.get("environment") or "staging"),
            replicas=int(config.get("replicas") or 1),
        )
        context.log(f"created deployment {deployment.name} serving {version}")
        return {"deployment_id": deployment.pk, "deployment": deployment.name, "strategy": "direct"}
    if deployment.project_id != version.model.project_id:
        raise ValidationError({"name": f"Deployment {name} belongs to another project."})
    if deployment.targets.filter(model_version=version, shadow=False, weight__gt=0).exists():
        context.log(f"{deployment.name} already serves {version}")
        return {"deployment_id": deployment.pk, "deployment": deployment.name, "strategy": deployment.strategy}
    if config.get("replicas") and int(config["replicas"]) != deployment.replicas:
        services.deployment_scale(deployment=deployment, actor=actor, replicas=int(config["replicas"]))
    services.deployment_rollout(
        deployment=deployment,
        model_version=version,
        strategy=strategy,
        actor=actor,
        traffic_percentage=int(config["traffic_percentage"]) if config.get("traffic_percentage") else None,
    )
    context.log(f"started a {strategy} rollout of {version} on {deployment.name}")
    phase = Deployment.objects.values_list("phase", flat=True).get(pk=deployment.pk)
    return {"deployment_id": deployment.pk, "deployment": deployment.name, "strategy": strategy, "phase": phase}
