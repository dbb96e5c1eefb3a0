"""manage.py run_pipeline (the seed's CLI) and load_demo_pipeline."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from apps.experiments.models import PipelineRun
from tests.experiments.conftest import add_version

CONFIGS = Path(settings.BASE_DIR) / "configs"


def _run(*args: str) -> str:
    out = StringIO()
    call_command("run_pipeline", *args, stdout=out)
    return out.getvalue()


def test_the_seed_cli_runs_the_full_pipeline_config(project, owner, iris) -> None:
    project.created_by = owner
    project.save()
    output = _run("--config", str(CONFIGS / "full_pipeline.yaml"), "--project", project.slug)
    pipeline_run = PipelineRun.objects.get()
    assert pipeline_run.status == "succeeded" and pipeline_run.executor == "inline"
    assert pipeline_run.experiment.name == "exp_001" and pipeline_run.run.params["n_estimators"] == 100
    assert "register  skipped (not available yet: the registry app is not installed)" in output
    assert f"Pipeline run {pipeline_run.pk} succeeded." in output


def test_one_stage_group_and_overrides(project, owner, iris) -> None:
    config = str(CONFIGS / "full_pipeline.yaml")
    _run("--config", config, "--project", project.slug, "--stage", "data_processing")
    pipeline_run = PipelineRun.objects.get()
    assert dict(pipeline_run.stages.values_list("name", "status"))["train"] == "skipped"
    output = _run(
        "--config", config, "--project", project.slug, "--experiment-id", "exp_002", "--model-type", "xgboost"
    )
    latest = PipelineRun.objects.order_by("-pk").first()
    assert latest.experiment.name == "exp_002" and latest.run.algorithm == "xgboost"
    assert "succeeded" in output


def test_queue_sends_the_stages_to_the_worker(project, owner, iris, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        output = _run("--config", str(CONFIGS / "full_pipeline.yaml"), "--project", project.slug, "--queue")
    pipeline_run = PipelineRun.objects.get()
    assert "Queued pipeline run" in output and pipeline_run.executor == "worker"
    pipeline_run.refresh_from_db()
    assert pipeline_run.status == "succeeded"


def test_cli_errors(project, iris, tmp_path) -> None:
    with pytest.raises(CommandError, match="Cannot read"):
        _run("--config", str(tmp_path / "missing.yaml"), "--project", project.slug)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_config: {dataset: iris}\nmodel_config: {algorithm: forest}\n")
    with pytest.raises(CommandError, match="model_config.algorithm: unknown algorithm 'forest'"):
        _run("--config", str(bad), "--project", project.slug)
    with pytest.raises(CommandError, match="No project with slug"):
        _run("--config", str(bad), "--project", "nope")


@pytest.mark.parametrize(
    ("config", "dataset"),
    [
        ("breast_cancer_xgboost_search.yaml", "breast_cancer"),
        ("diabetes_regression.yaml", "diabetes"),
        ("wine_pytorch_mlp.yaml", "wine"),
    ],
)
def test_the_example_configs_are_valid(project, owner, config, dataset) -> None:
    from apps.experiments import services

    add_version(project, dataset)
    text = (CONFIGS / config).read_text()
    normalised, _ = services.pipeline_config_from_request(config_text=text)
    assert normalised["data"]["dataset"] == dataset


def test_load_demo_pipeline_is_idempotent(owner) -> None:
    from apps.core.services import project_create

    demo = project_create(name="Demo", owner=owner)
    add_version(demo, "iris")
    out = StringIO()
    call_command("load_demo_pipeline", stdout=out)
    assert "Demo pipeline run" in out.getvalue()
    call_command("load_demo_pipeline", stdout=out)
    assert "already ran" in out.getvalue()
    assert PipelineRun.objects.filter(project=demo, status="succeeded").count() == 1
