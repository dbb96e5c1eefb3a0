"""Pipelines from Python, as in the seed's quick start:

    from mlops_sdk import MLOpsPipeline, PipelineConfig

    config = PipelineConfig.from_file("configs/full_pipeline.yaml")      # or PipelineConfig(project="demo")
    pipeline = MLOpsPipeline(config)
    model_version, deployment = pipeline.run_pipeline({
        "experiment_id": "exp_001",
        "data_config": {"dataset": "iris", "split": 0.8},
        "model_config": {"algorithm": "random_forest", "n_estimators": 100},
        "deployment_config": {"strategy": "blue_green", "replicas": 3},
    })

The console runs the stages (ingest, validate, features, train, evaluate, register, deploy) on its workers; the
SDK starts the run, follows it stage by stage, and returns what the register and deploy stages made (None for
a stage that did not run: no deployment_config, or thresholds not met).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlops_sdk.client import Client
from mlops_sdk.errors import ConfigurationError, PipelineFailed, Timeout
from mlops_sdk.types import Deployment, ModelVersion, PipelineRun, Run

logger = logging.getLogger("mlops_sdk.pipeline")

# The keys of the console's pipeline config; any other top-level key of a config file is the SDK's own.
PIPELINE_KEYS = (
    "experiment_id",
    "name",
    "description",
    "data_config",
    "model_config",
    "registry_config",
    "deployment_config",
)
SDK_KEYS = ("project", "url", "poll_interval", "timeout")
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_TIMEOUT = 3600.0

ProgressCallback = Callable[[PipelineRun], None]


@dataclass
class PipelineConfig:
    """Where and how pipelines run: the project, the polling, and a default experiment config.

    A config file holds the console's pipeline config (experiment_id, data_config, model_config, …) and may add
    `project`, `url`, `poll_interval` and `timeout` for the SDK; the token only comes from the environment
    (MLOPS_TOKEN) or the `token` argument, never from a file that may be committed.
    """

    project: str | None = None
    url: str | None = None
    token: str | None = field(default=None, repr=False)
    poll_interval: float = DEFAULT_POLL_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    experiment: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> PipelineConfig:
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ConfigurationError(f"{path}: a pipeline config is a mapping of keys to values")
        return cls.from_dict(data, **overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> PipelineConfig:
        if "token" in data:
            raise ConfigurationError("token: keep the API token out of config files; set MLOPS_TOKEN instead")
        settings = {key: data[key] for key in SDK_KEYS if key in data}
        experiment = {key: value for key, value in data.items() if key not in SDK_KEYS}
        settings.update({key: value for key, value in overrides.items() if value is not None})
        return cls(experiment=experiment, **settings)


def log_progress(pipeline_run: PipelineRun) -> None:
    """The default progress report: one log line per stage as it changes."""
    done = sum(stage.status in ("succeeded", "skipped", "failed") for stage in pipeline_run.stages)
    current = next((stage.name for stage in pipeline_run.stages if stage.status == "running"), "-")
    logger.info(
        "pipeline run %s: %s, %d/%d stages, now %s",
        pipeline_run.id,
        pipeline_run.status,
        done,
        len(pipeline_run.stages),
        current,
    )


class MLOpsPipeline:
    """Start pipeline runs on the console and follow them."""

    def __init__(self, config: PipelineConfig | dict[str, Any] | None = None, *, client: Client | None = None) -> None:
        if isinstance(config, dict):
            config = PipelineConfig.from_dict(config)
        self.config = config or PipelineConfig()
        self.client = client or Client(self.config.url, token=self.config.token, project=self.config.project)
        self.last_run: PipelineRun | None = None

    def start(self, experiment_config: dict[str, Any] | str | None = None, *, stage: str | None = None) -> PipelineRun:
        """Queue a pipeline run; `experiment_config` (a dict, or YAML text) overrides the config's keys."""
        body: dict[str, Any] = {"project": self.client.require_project(self.config.project)}
        if isinstance(experiment_config, str):
            if self.config.experiment:
                raise ConfigurationError("give the experiment config either in the PipelineConfig or as YAML text")
            body["config_yaml"] = experiment_config
        else:
            body["config"] = {**self.config.experiment, **(experiment_config or {})}
        if stage:
            body["stage"] = stage
        return PipelineRun.from_api(self.client.post("/pipeline-runs/", body))

    def get(self, pipeline_run_id: int) -> PipelineRun:
        return PipelineRun.from_api(self.client.get(f"/pipeline-runs/{pipeline_run_id}/"))

    def wait(
        self,
        pipeline_run: PipelineRun | int,
        *,
        on_progress: ProgressCallback | None = log_progress,
        timeout: float | None = None,
    ) -> PipelineRun:
        """Poll until the run has finished, calling `on_progress` whenever a stage changes; returns the run."""
        run_id = pipeline_run if isinstance(pipeline_run, int) else pipeline_run.id
        deadline = time.monotonic() + (timeout if timeout is not None else self.config.timeout)
        seen: tuple | None = None
        while True:
            current = self.get(run_id)
            state = (current.status, tuple((stage.name, stage.status) for stage in current.stages))
            if state != seen and on_progress is not None:
                on_progress(current)
            seen = state
            if current.finished:
                self.last_run = current
                return current
            if time.monotonic() > deadline:
                raise Timeout(f"pipeline run {run_id} is still {current.status} after the timeout")
            time.sleep(self.config.poll_interval)

    def run_pipeline(
        self,
        experiment_config: dict[str, Any] | str | None = None,
        *,
        stage: str | None = None,
        on_progress: ProgressCallback | None = log_progress,
    ) -> tuple[ModelVersion | None, Deployment | None]:
        """Run a pipeline to its end: (the registered model version, the deployment), each None when its stage
        did not run. A failed or cancelled run raises `PipelineFailed`."""
        finished = self.wait(self.start(experiment_config, stage=stage), on_progress=on_progress)
        if finished.status != "succeeded":
            raise PipelineFailed(finished)
        return self.results(finished)

    def results(self, pipeline_run: PipelineRun) -> tuple[ModelVersion | None, Deployment | None]:
        registered = pipeline_run.outputs("register").get("model_version_id")
        deployed = pipeline_run.outputs("deploy").get("deployment_id")
        version = ModelVersion.from_api(self.client.get(f"/model-versions/{registered}/")) if registered else None
        deployment = Deployment.from_api(self.client.get(f"/deployments/{deployed}/")) if deployed else None
        return version, deployment

    def training_run(self, pipeline_run: PipelineRun) -> Run | None:
        """The run holding the model's metrics (the best trial's under a search)."""
        run_id = pipeline_run.candidate_run or pipeline_run.run
        return Run.from_api(self.client.get(f"/runs/{run_id}/")) if run_id else None

    @staticmethod
    def passes_thresholds(pipeline_run: PipelineRun) -> bool:
        """Succeeded, and the evaluate stage found the thresholds met (a config without thresholds passes)."""
        evaluated = pipeline_run.outputs("evaluate")
        return (
            pipeline_run.status == "succeeded" and bool(evaluated) and evaluated.get("passes_thresholds") is not False
        )
