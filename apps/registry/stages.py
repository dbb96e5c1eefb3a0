"""The pipeline's `register` stage: registers the candidate run's bundle as the next version of a model.

Registered with the experiments app from `RegistryConfig.ready()`. The model is the pipeline config's
`registry_config.model_name`, or the experiment's name. Optional `registry_config` keys: `label`,
`description`, `tags`.
"""

from __future__ import annotations

from typing import Any

from apps.experiments.stages import StageContext, StageSkipped
from apps.registry import services
from apps.registry.choices import ModelVersionSource
from apps.registry.models import ModelVersion

CONFIG_KEYS = ("model_name", "label", "description", "tags")


def model_version_register_stage(context: StageContext) -> dict[str, Any]:
    config = context.config
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"registry_config: unknown keys {', '.join(unknown)}; allowed: {', '.join(CONFIG_KEYS)}")
    run = context.candidate_run
    if context.model_artifact is None:
        raise StageSkipped("the pipeline produced no model bundle to register")
    # A stage task that runs twice (a redelivered message) finds the version it registered the first time.
    pipeline_run = context.pipeline_run
    existing = ModelVersion.objects.filter(pipeline_run=pipeline_run, run=run).select_related("model").first()
    if existing is not None:
        context.log(f"already registered as {existing}")
    else:
        existing = services.model_version_register_from_run(
            run=run,
            actor=context.actor,
            model_name=str(config.get("model_name") or pipeline_run.experiment.name),
            label=str(config.get("label") or ""),
            description=str(config.get("description") or ""),
            tags=config.get("tags") if isinstance(config.get("tags"), dict) else None,
            pipeline_run=pipeline_run,
            source=ModelVersionSource.PIPELINE,
        )
        context.log(f"registered {existing} ({existing.sha256[:12]}…)")
    return {
        "model_version_id": existing.pk,
        "version": existing.number,
        "model_id": existing.model_id,
        "model_name": existing.model.name,
    }
