"""The stage protocol: what every pipeline stage is called with, and how other apps plug theirs in.

Every stage, built in or plugged in, is a `StageHandler`: called on the worker as `handler(context)` with a
`StageContext`, it returns the stage's outputs (a JSON-serialisable dict, or None), or `WAITING` when the
stage goes on in other tasks (the HPO train stage waits for its trials). It raises `StageSkipped(reason)`
to mark the stage skipped, `StageFailed(reason)` (or any other exception) to fail it; the message is shown
to the user.

The pipeline runner finds every handler here. The experiments app registers the built-in stages (ingest,
validate, features, train, evaluate) from its `AppConfig.ready()` and imports neither the registry nor the
deployments app. Those apps register a handler for `register` and `deploy` from theirs:

    from apps.experiments.stages import register_stage_handler
    register_stage_handler("register", model_version_register_stage)

With no handler registered the stage is skipped with "not available yet: the registry app is not
installed", and the pipeline still succeeds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from apps.experiments.choices import PipelineStageName

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from apps.experiments.models import PipelineRun, PipelineStage, Run, RunArtifact
    from apps.experiments.services.runtime import StageRuntime


class Waiting(enum.Enum):
    WAITING = "waiting"


# A stage returns this to say "not done yet": the HPO train stage waits for its trial tasks.
WAITING = Waiting.WAITING


@dataclass(frozen=True)
class StageContext:
    """What a stage gets: its row, its runtime, and what the pipeline knows by then.

    `config` is the pipeline's `registry_config` for the register stage and `deployment_config` for the
    deploy stage (a dict, checked by the handler), else empty; `outputs` holds the outputs of the stages
    before, by stage name (`outputs["register"]` for deploy); `actor` started the pipeline (None: the system).
    """

    stage: PipelineStage
    runtime: StageRuntime
    config: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    actor: AbstractBaseUser | None = None

    @property
    def pipeline_run(self) -> PipelineRun:
        return self.stage.pipeline_run

    @property
    def run(self) -> Run:
        """The pipeline's run (params, metrics, `passes_thresholds`, `threshold_failures`)."""
        return self.pipeline_run.run

    @property
    def candidate_run(self) -> Run:
        """The run whose model is the candidate: the best trial under a search, else `run`."""
        return self.pipeline_run.candidate_run or self.run

    @cached_property
    def model_artifact(self) -> RunArtifact | None:
        """The candidate's model bundle (`sha256`, `size_bytes`), if it has one."""
        return self.candidate_run.artifacts.filter(kind="model").first()

    def log(self, message: str) -> None:
        """Append a line to the stage's log."""
        self.runtime.log(message)

    def should_stop(self) -> bool:
        """True once the pipeline run is being cancelled."""
        return self.runtime.should_stop()


class StageHandler(Protocol):
    def __call__(self, context: StageContext) -> dict[str, Any] | Waiting | None: ...


# Stages other apps provide, and the app that provides each (named in the "not available" message).
PLUGGABLE_STAGES = {"register": "registry", "deploy": "deployments"}

_handlers: dict[str, StageHandler] = {}


class StageSkipped(Exception):  # noqa: N818 - a stage outcome, not an error
    """Raised by a handler that decides its stage has nothing to do; the message says why."""


class StageFailed(Exception):
    """A stage cannot go on; the message is shown to the user as the reason."""


def register_stage_handler(name: str, handler: StageHandler) -> None:
    """Install the handler of a stage (the experiments app registers the built-in ones, other apps `register`
    and `deploy`); a second call replaces it."""
    if name not in PipelineStageName.values:
        raise ValueError(f"{name!r} is not a pipeline stage; expected one of {', '.join(PipelineStageName.values)}")
    if not callable(handler):
        raise TypeError("a stage handler must be callable as handler(context)")
    _handlers[name] = handler


def unregister_stage_handler(name: str) -> None:
    """Remove a handler (tests use it to restore the registry)."""
    _handlers.pop(name, None)


def stage_handler(name: str) -> StageHandler | None:
    return _handlers.get(name)


def unavailable_reason(name: str) -> str:
    return f"not available yet: the {PLUGGABLE_STAGES.get(name, 'experiments')} app is not installed"
