"""The stage-handler registry: how the registry and deployments apps plug their stages into pipelines.

The experiments app runs the built-in stages (ingest, validate, features, train, evaluate) itself and
imports neither the registry nor the deployments app. Those apps register a handler for `register`
and `deploy` from their `AppConfig.ready()`:

    from apps.experiments.stages import register_stage_handler
    register_stage_handler("register", model_version_register_stage)

A handler is called on the worker as `handler(pipeline_run, stage, context)` and returns the stage's
outputs (a JSON-serialisable dict). `context` holds:

- `run`: the pipeline's Run (params, metrics, `passes_thresholds`, `threshold_failures`);
- `candidate_run`: the Run whose model is the candidate (the best trial under a search, else `run`);
- `model_artifact`: the candidate's RunArtifact of kind "model" (`sha256`, `size_bytes`);
- `config`: the pipeline's `registry_config` or `deployment_config` (a dict, checked by the handler);
- `outputs`: the outputs of the stages before, by stage name (`outputs["register"]` for deploy);
- `log(message)`: append a line to the stage's log; `should_stop()`: True once the run is cancelled;
- `actor`: the user who started the pipeline (None for the system).

A handler raises `StageSkipped(reason)` to mark the stage skipped, and any other exception to fail it
(the message is shown to the user). With no handler registered the stage is skipped with "not
available yet: the registry app is not installed", and the pipeline still succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

StageHandler = Callable[[Any, Any, dict[str, Any]], dict[str, Any] | None]

# Stages other apps provide, and the app that provides each (named in the "not available" message).
PLUGGABLE_STAGES = {"register": "registry", "deploy": "deployments"}

_handlers: dict[str, StageHandler] = {}


class StageSkipped(Exception):  # noqa: N818 - a stage outcome, not an error
    """Raised by a handler that decides its stage has nothing to do; the message says why."""


def register_stage_handler(name: str, handler: StageHandler) -> None:
    """Install the handler of a pluggable stage (`register` or `deploy`); a second call replaces it."""
    if name not in PLUGGABLE_STAGES:
        raise ValueError(f"{name!r} is not a pluggable stage; expected one of {', '.join(PLUGGABLE_STAGES)}")
    if not callable(handler):
        raise TypeError("a stage handler must be callable as handler(pipeline_run, stage, context)")
    _handlers[name] = handler


def unregister_stage_handler(name: str) -> None:
    """Remove a handler (tests use it to restore the registry)."""
    _handlers.pop(name, None)


def stage_handler(name: str) -> StageHandler | None:
    return _handlers.get(name)


def unavailable_reason(name: str) -> str:
    return f"not available yet: the {PLUGGABLE_STAGES[name]} app is not installed"
