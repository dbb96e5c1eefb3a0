"""Typed results: the console's JSON as dataclasses. Fields the console adds later are kept in `raw`, so an
older SDK keeps working against a newer console."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T", bound="Resource")

FINISHED_PIPELINE = frozenset({"succeeded", "failed", "cancelled"})
FINISHED_ROLLOUT = frozenset({"done", "rolled_back"})
FINISHED_JOB = frozenset({"succeeded", "failed"})


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclasses.dataclass
class Resource:
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls: type[T], data: dict[str, Any]) -> T:
        names = {field.name for field in dataclasses.fields(cls)} - {"raw"}
        values = {name: data[name] for name in names if name in data}
        for field in dataclasses.fields(cls):
            if field.name in values and field.name.endswith("_at"):
                values[field.name] = parse_time(values[field.name])
        return cls(raw=data, **values)


@dataclasses.dataclass
class Project(Resource):
    id: int = 0
    slug: str = ""
    name: str = ""
    role: str | None = None


@dataclasses.dataclass
class PipelineStage(Resource):
    name: str = ""
    position: int = 0
    status: str = ""
    requested: bool = True
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    log: str = ""


@dataclasses.dataclass
class PipelineRun(Resource):
    id: int = 0
    project: str = ""
    experiment: int | None = None
    experiment_name: str = ""
    status: str = ""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    run: int | None = None
    candidate_run: int | None = None
    study: int | None = None
    error: str = ""
    stages: list[PipelineStage] = dataclasses.field(default_factory=list)
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> PipelineRun:
        pipeline_run = super().from_api({**data, "stages": []})
        pipeline_run.raw = data
        pipeline_run.stages = [PipelineStage.from_api(stage) for stage in data.get("stages", [])]
        return pipeline_run

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_PIPELINE

    def stage(self, name: str) -> PipelineStage | None:
        return next((stage for stage in self.stages if stage.name == name), None)

    def outputs(self, name: str) -> dict[str, Any]:
        stage = self.stage(name)
        return dict(stage.outputs or {}) if stage and stage.status == "succeeded" else {}


@dataclasses.dataclass
class Run(Resource):
    id: int = 0
    project: str = ""
    experiment_name: str = ""
    name: str = ""
    status: str = ""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    cv_metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    task: str = ""
    algorithm: str = ""
    passes_thresholds: bool | None = None
    threshold_failures: list[Any] = dataclasses.field(default_factory=list)
    pipeline_run: int | None = None
    error: str = ""
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclasses.dataclass
class ModelVersion(Resource):
    id: int = 0
    model: int = 0
    model_name: str = ""
    project: str = ""
    number: int = 0
    label: str = ""
    stage: str = ""
    aliases: list[str] = dataclasses.field(default_factory=list)
    flavor: str = ""
    task: str = ""
    sha256: str = ""
    size_bytes: int = 0
    signature: dict[str, Any] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    validation: dict[str, Any] = dataclasses.field(default_factory=dict)
    validation_passed: bool | None = None
    run: int | None = None
    pipeline_run: int | None = None
    tags: dict[str, Any] = dataclasses.field(default_factory=dict)
    created_at: datetime | None = None

    def __str__(self) -> str:
        return f"{self.model_name}:{self.number}"


@dataclasses.dataclass
class RegisteredModel(Resource):
    id: int = 0
    project: str = ""
    name: str = ""
    description: str = ""
    version_count: int = 0
    production_version: int | None = None
    aliases: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Deployment(Resource):
    id: int = 0
    project: str = ""
    name: str = ""
    model: str = ""
    environment: str = ""
    backend: str = ""
    strategy: str = ""
    phase: str = ""
    strategy_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    status: str = ""
    status_message: str = ""
    replicas: int = 0
    generation: int = 0
    applied_generation: int | None = None
    traffic: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    observed: dict[str, Any] = dataclasses.field(default_factory=dict)
    url: str | None = None
    updated_at: datetime | None = None

    @property
    def decisions(self) -> list[dict[str, Any]]:
        """The canary analysis' recent decisions (action, reason, and the numbers behind it), oldest first."""
        return list((self.strategy_state or {}).get("decisions", []))

    @property
    def rollout_finished(self) -> bool:
        return self.phase in FINISHED_ROLLOUT or not self.phase


@dataclasses.dataclass
class DeploymentEvent(Resource):
    id: int = 0
    kind: str = ""
    message: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    generation: int | None = None
    actor: str | None = None
    created_at: datetime | None = None


@dataclasses.dataclass
class PromotionRequest(Resource):
    id: int = 0
    model: int = 0
    model_name: str = ""
    version: int = 0
    version_number: int = 0
    target_stage: str = ""
    target_alias: str = ""
    status: str = ""
    comment: str = ""
    required_approvals: int = 0
    gate_checks: Any = None
    created_at: datetime | None = None


@dataclasses.dataclass
class VersionPerformance(Resource):
    """One model version in a performance window: realised metrics from labels, and the label-free estimate."""

    model_version_id: int | None = None
    shadow: bool = False
    task: str | None = None
    predictions: int = 0
    labelled: int = 0
    realised: dict[str, Any] | None = None
    reason: str | None = None
    estimate: dict[str, Any] | None = None
    estimate_reason: str | None = None

    @property
    def accuracy(self) -> float | None:
        return (self.realised or {}).get("accuracy")


@dataclasses.dataclass
class Performance(Resource):
    deployment_id: int = 0
    since: datetime | None = None
    until: datetime | None = None
    versions: list[VersionPerformance] = dataclasses.field(default_factory=list)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Performance:
        return cls(
            raw=data,
            deployment_id=data["deployment_id"],
            since=parse_time(data.get("since")),
            until=parse_time(data.get("until")),
            versions=[VersionPerformance.from_api(version) for version in data.get("versions", [])],
        )


@dataclasses.dataclass
class DriftReport(Resource):
    id: int = 0
    project: str = ""
    deployment: int = 0
    model_version: int | None = None
    version: int | None = None
    status: str = ""
    progress: float | None = None
    n_rows: int | None = None
    drift_share: float | None = None
    dataset_drift: bool | None = None
    reason: str = ""
    result: dict[str, Any] | None = None
    created_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_JOB

    @property
    def drift_score(self) -> float | None:
        """The share of drifted columns, the seed's `drift_score`."""
        return self.drift_share
