"""The built-in stages' handlers, registered with the stage registry when the app is ready.

The pipeline runner finds every handler, built in or plugged in by another app, in one registry
(apps/experiments/stages.py), so it imports neither the stage bodies nor the HPO studies that import it.
"""

from __future__ import annotations

from apps.experiments.choices import PipelineStageName
from apps.experiments.services.builtin_stages import evaluate_stage, features, ingest, validate
from apps.experiments.services.studies import train_stage
from apps.experiments.stages import StageHandler, register_stage_handler

BUILTIN_STAGES: dict[str, StageHandler] = {
    PipelineStageName.INGEST: ingest,
    PipelineStageName.VALIDATE: validate,
    PipelineStageName.FEATURES: features,
    PipelineStageName.TRAIN: train_stage,
    PipelineStageName.EVALUATE: evaluate_stage,
}


def register_builtin_stages() -> None:
    for name, handler in BUILTIN_STAGES.items():
        register_stage_handler(name, handler)
