"""The pipeline's register stage and registration from a finished run (UI/API)."""

from __future__ import annotations

import pytest

from apps.experiments import services as experiment_services
from apps.experiments.services.runtime import StageRuntime
from apps.experiments.stages import StageContext, stage_handler
from apps.registry.choices import ModelVersionSource
from apps.registry.models import ModelVersion
from apps.registry.stages import model_version_register_stage
from tests.conftest import client_for
from tests.experiments.conftest import add_version

pytestmark = pytest.mark.django_db

CONFIG = """
experiment_id: iris-experiment
data_config: {dataset: iris, split: 0.8}
model_config: {algorithm: random_forest, n_estimators: 5, thresholds: {accuracy: ">=0.5"}}
registry_config: {model_name: iris-rf, label: v1.0.0}
"""


@pytest.fixture
def pipeline_run(project, member, django_capture_on_commit_callbacks):
    add_version(project, "iris")
    with django_capture_on_commit_callbacks(execute=True):
        created = experiment_services.pipeline_run_create(
            project=project, actor=member, config_text=CONFIG, executor="inline"
        )
    with django_capture_on_commit_callbacks(execute=True):
        return experiment_services.pipeline_run_execute_inline(pipeline_run=created)


def test_the_registry_provides_the_register_stage() -> None:
    assert stage_handler("register") is model_version_register_stage


def test_the_register_stage_registers_the_candidate_with_its_lineage(pipeline_run) -> None:
    assert pipeline_run.status == "succeeded", pipeline_run.error
    stage = pipeline_run.stages.get(name="register")
    assert stage.status == "succeeded", stage.error
    version = ModelVersion.objects.get()
    assert stage.outputs["model_version_id"] == version.pk and stage.outputs["version"] == 1
    assert version.model.name == "iris-rf" and version.label == "v1.0.0"
    assert version.source == ModelVersionSource.PIPELINE
    assert version.pipeline_run == pipeline_run and version.run == pipeline_run.run
    assert version.dataset_version == pipeline_run.dataset_version
    assert version.validation["thresholds"] == {"accuracy": ">=0.5"} and version.validation_passed is True
    assert "accuracy" in version.metrics


def test_the_stage_is_safe_to_run_twice(pipeline_run) -> None:
    stage = pipeline_run.stages.select_related("pipeline_run__run", "pipeline_run__experiment").get(name="register")
    context = StageContext(
        stage=stage,
        runtime=StageRuntime(pipeline_run_id=pipeline_run.pk, stage_id=stage.pk),
        config=pipeline_run.config["registry_config"],
        actor=pipeline_run.created_by,
    )
    outputs = model_version_register_stage(context)
    assert outputs["version"] == 1 and ModelVersion.objects.count() == 1
    assert outputs["model_version_id"] == stage.outputs["model_version_id"]


def test_register_a_finished_run_through_the_api(pipeline_run, member, viewer) -> None:
    run = pipeline_run.run
    assert client_for(viewer).post("/api/v1/model-versions/", {"run": run.pk}).status_code == 403
    response = client_for(member).post("/api/v1/model-versions/", {"run": run.pk, "model_name": "from-run"})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["source"] == "run" and body["run"] == run.pk and body["model_name"] == "from-run"
    missing = client_for(member).post("/api/v1/model-versions/", {"run": 999999})
    assert missing.status_code == 400 and "run" in missing.json()
