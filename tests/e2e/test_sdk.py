"""The README's quick start and the CI examples, end to end: the SDK and the `mlops` CLI talk HTTP to a live
console (a gunicorn process of its own on the test database, tests/sdk/conftest.py), whose tasks run on a real
Celery worker process (tests/e2e/conftest.py), which trains, registers, and starts real model server processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apps.registry.models import PromotionRequest
from mlops_sdk import (
    MLOpsPipeline,
    ModelDeployment,
    ModelRegistry,
    NotFound,
    PipelineConfig,
    PipelineVisualizer,
    ValidationError,
    check_data_drift,
    plot_error_rates,
    plot_execution_timeline,
    plot_latency_distribution,
    plot_pipeline_dag,
    plot_resource_usage,
)
from mlops_sdk.monitoring import drift_reports
from tests.e2e.conftest import CeleryWorker
from tests.e2e.test_pipelines import add_version
from tests.monitoring.conftest import deployment, log_traffic, training_version  # noqa: F401 (fixtures)
from tests.registry.registry_helpers import iris_frame
from tests.sdk.conftest import ROOT, ConsoleProcess, sdk_client, sdk_env, token_for
from worker.deployments.local import LocalProcessBackend

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

EXPERIMENT = {
    "experiment_id": "exp_001",
    "data_config": {"dataset": "iris", "split": 0.8},
    "model_config": {"algorithm": "random_forest", "n_estimators": 20, "thresholds": {"accuracy": ">= 0.8"}},
    "registry_config": {"model_name": "iris-classifier"},
    "deployment_config": {"strategy": "blue_green", "replicas": 1},
}
STAGES = ["ingest", "validate", "features", "train", "evaluate", "register", "deploy"]
EXAMPLES = ROOT / "examples" / "ci"


@pytest.fixture
def model_servers(celery_worker: CeleryWorker) -> Iterator[LocalProcessBackend]:
    """The model servers the worker starts (in its own state folder), stopped when the test ends."""
    backend = LocalProcessBackend(state_dir=Path(celery_worker.env["VAR_DIR"]) / "deployments")
    yield backend
    for name in backend.names():
        backend.delete(name)


def test_the_quick_start(
    worker_console: ConsoleProcess,
    celery_worker: CeleryWorker,
    model_servers: LocalProcessBackend,
    project: Any,
    member: Any,
) -> None:
    add_version(project, "iris")
    # The README's: the repository's config file, with the experiment config given to run_pipeline on top.
    config = PipelineConfig.from_file(
        ROOT / "configs" / "full_pipeline.yaml", project=project.slug, url=worker_console.url, token=token_for(member)
    )
    config.poll_interval = 0.3
    pipeline = MLOpsPipeline(config)
    progress: list[Any] = []

    model_version, deployed = pipeline.run_pipeline(EXPERIMENT, on_progress=progress.append)

    assert (model_version.model_name, model_version.number) == ("iris-classifier", 1)
    assert model_version.validation_passed is not False and model_version.metrics["accuracy"] >= 0.8
    assert deployed.name == "iris-classifier" and deployed.traffic[0]["model_version"] == model_version.id
    # Progress was followed stage by stage, from unfinished to succeeded.
    assert not progress[0].finished and progress[-1].status == "succeeded" and len(progress) >= 3
    finished = pipeline.last_run
    assert [stage.name for stage in finished.stages] == STAGES
    assert MLOpsPipeline.passes_thresholds(finished)

    # The seed's pipeline charts, from the run's stages.
    dag = plot_pipeline_dag(finished)
    assert list(dag.data[1].text) == STAGES
    # The seed's class reads the run itself from its id.
    assert PipelineVisualizer(client=pipeline.client).plot_pipeline_dag(finished.id).to_dict() == dag.to_dict()
    assert set(dag.data[1].marker.color) == {"#198754"}  # every stage succeeded
    timeline = plot_execution_timeline(finished)
    assert [bar.y[0] for bar in timeline.data] == STAGES and all(bar.x[0] >= 0 for bar in timeline.data)
    usage = plot_resource_usage(finished)
    train = STAGES.index("train")
    assert usage.data[0].y[train] == pytest.approx(finished.stage("train").cpu_seconds)
    assert usage.data[1].y[train] > 0  # peak memory in MiB

    # The registered model, loaded through the model server's safe loader after its hash was checked.
    client = pipeline.client
    model, metadata = ModelRegistry(client=client).get_model("iris-classifier", 1)
    frame, labels = iris_frame()
    frame.columns = [spec["name"] for spec in model_version.signature["inputs"]]
    predicted = model.predict(frame.to_dict(orient="records"))
    assert (predicted == labels).mean() > 0.9 and metadata["sha256"] == model_version.sha256
    # The same model registered again from its run, under another name.
    from_run = ModelRegistry(client=client).register_model(finished.run, None, {"model_name": "iris-from-run"})
    assert (from_run.model_name, from_run.number, from_run.sha256) == ("iris-from-run", 1, model_version.sha256)

    # A second version, registered without deploying, then rolled out as a 10% canary.
    version_2, not_deployed = pipeline.run_pipeline(
        {**EXPERIMENT, "model_config": {"algorithm": "random_forest", "n_estimators": 10}}, stage="registration"
    )
    assert version_2.number == 2 and not_deployed is None
    canary = ModelDeployment(
        model_version="iris-classifier:2", deployment_strategy="canary", traffic_percentage=10, client=client
    )
    rolled = canary.deploy()
    assert rolled.id == deployed.id and rolled.strategy == "canary" and rolled.generation > deployed.generation
    assert {entry["version"] for entry in rolled.traffic} == {1, 2}

    updates: list[Any] = []
    status = canary.monitor(
        follow=True,
        until=lambda snapshot: snapshot.deployment.applied_generation == snapshot.deployment.generation,
        on_update=updates.append,
        poll_interval=0.5,
        timeout=180,
    )
    assert updates and status.deployment.applied_generation == rolled.generation
    assert status.events and status.events[0].generation is not None
    assert "iris-classifier" in status.summary()
    # No traffic yet, so no analysis window: the latency and error charts are empty, not broken.
    assert all(len(trace.x) == 0 for trace in plot_latency_distribution(status).data)
    assert all(len(trace.x) == 0 for trace in plot_error_rates(status).data)

    rolled_back = canary.rollback(reason="quick start done")
    assert [entry["version"] for entry in rolled_back.traffic if entry["weight"]] == [1]
    client.delete(f"/deployments/{deployed.id}/")


def _commands(workflow: dict[str, Any], gitlab: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The shell lines of each example that call the CLI (the checkout and `pip install` steps are CI's own)."""
    github = [step["run"] for step in workflow["jobs"]["train"]["steps"] if "mlops " in step.get("run", "")]
    lab = [line for line in gitlab["train"]["script"] if "mlops " in line]
    return github, lab


def test_the_ci_examples_run_against_a_live_console(
    worker_console: ConsoleProcess, celery_worker: CeleryWorker, project: Any, member: Any, tmp_path: Path
) -> None:
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    gitlab = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())
    assert workflow["jobs"]["train"]["env"]["MLOPS_TOKEN"] == "${{ secrets.MLOPS_TOKEN }}"
    assert "pip install ./sdk" in gitlab["train"]["before_script"]
    github, lab = _commands(workflow, gitlab)
    assert len(github) == 3 and len(lab) == 3
    add_version(project, "iris")

    # `mlops` on PATH, as `pip install ./sdk` puts it there.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "mlops"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mlops_sdk.cli "$@"\n')
    shim.chmod(0o755)
    env = {
        **sdk_env(worker_console, member, project),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "step-summary.md"),
        "GITHUB_RUN_ID": "101",
        "GITHUB_SHA": "abc123",
        "CI_PIPELINE_ID": "202",
        "CI_COMMIT_SHA": "def456",
    }
    for name, lines in (("github", github), ("gitlab", lab)):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "examples").symlink_to(ROOT / "examples")
        for line in lines:
            done = subprocess.run(
                ["bash", "-e", "-c", line], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}\n{celery_worker.log()[-3000:]}"
        run_id = int((workdir / "run-id.txt").read_text())
        summary = (tmp_path / "step-summary.md" if name == "github" else workdir / "summary.md").read_text()
        assert f"Pipeline run {run_id}: succeeded" in summary and "Thresholds: passed" in summary
        assert "| accuracy |" in summary and "`iris-classifier:" in summary

    requests = PromotionRequest.objects.order_by("pk")
    assert [(r.target_stage, r.version.number) for r in requests] == [("staging", 1), ("staging", 2)]
    assert requests[0].comment == "CI run 101 on abc123" and requests[1].comment == "CI pipeline 202 on def456"


def test_the_cli_exit_codes(
    worker_console: ConsoleProcess, celery_worker: CeleryWorker, project: Any, member: Any, tmp_path: Path
) -> None:
    add_version(project, "iris")
    env = sdk_env(worker_console, member, project)

    def mlops(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "mlops_sdk.cli", *args]
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    # A stump cannot tell three species apart: the run succeeds, its model misses the threshold, exit 1.
    stump = tmp_path / "stump.yaml"
    stump.write_text(
        "experiment_id: stump\ndata_config: {dataset: iris, split: 0.8}\n"
        'model_config: {algorithm: random_forest, n_estimators: 1, max_depth: 1, thresholds: {accuracy: ">= 0.9"}}\n'
    )
    done = mlops("pipeline", "run", "--config", str(stump), "--stage", "evaluation", "--wait", "--poll-interval", "0.3")
    assert done.returncode == 1, done.stderr
    assert "did not pass its thresholds: accuracy" in done.stderr
    run_id = int(done.stdout.strip())
    summary = mlops("run", "summary", str(run_id), "--format", "json")
    assert summary.returncode == 0 and '"passes_thresholds": false' in summary.stdout

    # A config the console refuses: exit 2, and the message names the key.
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_config: {dataset: iris, split: 2}\nmodel_config: {algorithm: random_forest}\n")
    done = mlops("pipeline", "run", "--config", str(bad), "--wait")
    assert done.returncode == 2 and "data_config.split: is the training fraction" in done.stderr

    # A token that is not valid: exit 2 with the console's reason.
    env["MLOPS_TOKEN"] = "mlc_revoked"
    done = mlops("run", "summary", str(run_id))
    assert done.returncode == 2 and "unknown or revoked" in done.stderr


def test_check_data_drift_runs_a_report_on_the_worker(
    worker_console: ConsoleProcess,
    celery_worker: CeleryWorker,
    deployment: Any,  # noqa: F811
    member: Any,
    project: Any,
) -> None:
    log_traffic(deployment, rows=400, drifted=True)
    client = sdk_client(worker_console, member, project)
    report = check_data_drift(deployment.pk, window="24h", client=client, poll_interval=0.3, timeout=120)
    assert report.status == "succeeded", report.reason
    assert report.dataset_drift is True and report.drift_score == 1.0 and report.n_rows == 400
    assert {column["column"]: column["drifted"] for column in report.result["columns"]} == {"x": True, "colour": True}
    assert [r.id for r in drift_reports(deployment.pk, client=client)] == [report.id]

    with pytest.raises(ValidationError) as caught:
        check_data_drift(deployment.pk, window="forever", client=client)
    assert list(caught.value.fields) == ["window"]
    with pytest.raises(NotFound) as caught:
        check_data_drift(987654, client=client)
    assert caught.value.fields == {"deployment": ["No such deployment."]}
