"""Fixtures of the experiments tests: profiled demo datasets in the shared project, pipeline configs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apps.core.artifacts import get_artifact_store
from apps.core.choices import ProjectRole
from apps.core.models import Membership
from apps.datasets import services as dataset_services
from apps.datasets.models import DatasetVersion
from apps.experiments import stages
from tests.factories import UserFactory
from worker.datasets.demo import demo_csv_bytes

# Small models keep the suite fast; the configs below train in well under a second each.
IRIS_CONFIG = """
experiment_id: exp_001
data_config: {dataset: iris, split: 0.8}
model_config: {algorithm: random_forest, n_estimators: 10}
deployment_config: {strategy: blue_green, replicas: 3}
"""


def add_version(
    project: object, name: str, data: bytes | None = None, *, rules: dict | None = None, profile: bool = True
) -> DatasetVersion:
    """A dataset version in `project`, profiled synchronously as the worker would (unless `profile` is off:
    then the worker that its queued task reaches profiles it)."""
    from apps.datasets.models import Dataset

    actor = UserFactory(username="dataset-loader")
    Membership.objects.get_or_create(project=project, user=actor, defaults={"role": ProjectRole.EDITOR})
    dataset = Dataset.objects.filter(project=project, name=name).first() or dataset_services.dataset_create(
        project=project, name=name, actor=actor, rules=rules
    )
    fd, temp = get_artifact_store().new_temp_file()
    with os.fdopen(fd, "wb") as handle:
        handle.write(data if data is not None else demo_csv_bytes(name))
    try:
        version, _ = dataset_services.dataset_version_create(
            dataset=dataset, path=Path(temp), file_name=f"{name}.csv", actor=actor
        )
    finally:
        Path(temp).unlink(missing_ok=True)
    if profile:
        dataset_services.dataset_version_profile(version_id=version.pk)
        version.refresh_from_db()
    return version


@pytest.fixture
def iris(project: object) -> DatasetVersion:
    return add_version(project, "iris")


@pytest.fixture
def dataset_version() -> Callable[..., DatasetVersion]:
    return add_version


@pytest.fixture(autouse=True)
def experiments_alone() -> Iterator[None]:
    """These tests exercise the experiments app by itself, so the register and deploy handlers that the
    registry and deployments apps add at start are taken away; a test that wants a handler registers its
    own with `stage_handlers`. The chain through the real handlers is tested in tests/registry and
    tests/deployments."""
    saved = dict(stages._handlers)
    for name in stages.PLUGGABLE_STAGES:
        stages.unregister_stage_handler(name)
    yield
    stages._handlers.clear()
    stages._handlers.update(saved)


@pytest.fixture
def stage_handlers() -> Iterator[Callable]:
    """Register stage handlers for a test; the registry is restored afterwards."""
    saved = dict(stages._handlers)
    yield stages.register_stage_handler
    stages._handlers.clear()
    stages._handlers.update(saved)


@pytest.fixture
def run_pipeline(django_capture_on_commit_callbacks: Callable) -> Callable[..., object]:
    """Start a pipeline the way the API does and let the (eager) worker run every stage task."""
    from apps.experiments import services

    def run(project: object, actor: object, text: str, **options: object) -> object:
        with django_capture_on_commit_callbacks(execute=True):
            pipeline_run = services.pipeline_run_create(project=project, actor=actor, config_text=text, **options)
        pipeline_run.refresh_from_db()
        return pipeline_run

    return run
