"""Pipelines on the real stack: Celery workers on Redis, the test database in Postgres, Chromium.

- A random forest on iris and an XGBoost model with 5 Optuna trials on breast_cancer finish on the
  session's worker (tests/e2e/conftest.py), with metrics and artifacts, and their pages render in
  Chromium without JavaScript errors (screenshots go to var/screenshots/).
- On a prefork worker started here: a worker whose child is SIGKILLed mid-training, and then is itself
  killed and replaced, leaves the run retried and succeeded (or failed with the reason) within the bound;
  a cancelled pipeline stops; a stage over its soft time limit fails with that reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from apps.datasets.models import DatasetVersion
from apps.experiments import services
from apps.experiments.models import PipelineRun, PipelineStage, Run, RunMetric, Study
from tests.e2e.conftest import ROOT, WORKER_START_TIMEOUT, CeleryWorker, browser_login, screenshot, wait_for
from tests.experiments.conftest import add_version as add_demo_version

pytestmark = pytest.mark.e2e

IRIS = """
experiment_id: exp_001
data_config: {dataset: iris, split: 0.8}
model_config: {algorithm: random_forest, n_estimators: 20}
"""
XGB_SEARCH = """
experiment_id: breast_cancer_xgb
data_config: {dataset: breast_cancer, split: 0.8}
model_config:
  algorithm: xgboost
  seed: 3
  search:
    n_trials: 5
    metric: roc_auc
    space:
      n_estimators: {type: int, low: 5, high: 20}
      max_depth: {type: int, low: 2, high: 5}
      learning_rate: {type: float, low: 0.05, high: 0.3, log: true}
"""
# 600 boosting rounds of a 10-class model on digits: the stage trains for 2.5 s on an idle two-core machine, 15 to
# 30 s on a busy one. The kill below comes after the first round's metrics, about a second into the stage; with
# 200 rounds (1.4 s idle) one run in eleven failed.
SLOW = """
experiment_id: slow
data_config: {dataset: digits}
model_config: {algorithm: xgboost, n_estimators: 600, max_depth: 6, task: classification}
"""
# The documented bound: takeover after 10 s of silence, plus the redelivery (visibility timeout here),
# plus the retried training itself.
RECOVERY_BOUND_SECONDS = 150
VISIBILITY_TIMEOUT_SECONDS = 5


def add_version(project: object, name: str) -> DatasetVersion:
    """A demo dataset version, profiled by the worker (profiling it here too would race the worker for it)."""
    version = add_demo_version(project, name, profile=False)
    return wait_for(
        lambda: DatasetVersion.objects.filter(pk=version.pk, status="ready").first(), timeout=60, what=f"{name}"
    )


def _finished(pipeline_run: PipelineRun) -> PipelineRun | None:
    pipeline_run.refresh_from_db()
    return pipeline_run if pipeline_run.is_finished else None


def _page_ok(page: object, live_server: object, path: str, selector: str) -> None:
    page.goto(f"{live_server.url}{path}")
    page.wait_for_selector(selector, timeout=30_000)


def _screenshots(page: object, name: str, selector: str) -> None:
    """Laptop and phone width; `screenshot` loads the page again at each width, so the figures are laid out for it."""
    screenshot(page, name, width=1366, height=900)
    screenshot(page, name, width=390, height=844)
    page.wait_for_selector(selector, timeout=30_000)
    page.set_viewport_size({"width": 1366, "height": 900})


def test_iris_and_an_xgboost_search_finish_on_a_real_worker(
    live_server: object,
    page: object,
    js_errors: list[str],
    celery_worker: CeleryWorker,
    project: object,
    member: object,
) -> None:
    add_version(project, "iris")
    add_version(project, "breast_cancer")
    iris = services.pipeline_run_create(project=project, actor=member, config_text=IRIS)
    search = services.pipeline_run_create(project=project, actor=member, config_text=XGB_SEARCH)

    browser_login(page, live_server, member)
    # Watch the DAG live while the worker runs the stages (htmx polls the partial every 2 s).
    page.goto(f"{live_server.url}/experiments/pipelines/{search.pk}/")
    page.wait_for_selector("#plot-dag .main-svg")
    for pipeline_run in (iris, search):
        wait_for(lambda p=pipeline_run: _finished(p), timeout=240, what=f"pipeline run {pipeline_run.pk}")
        assert pipeline_run.status == "succeeded", f"{pipeline_run.error}\n{celery_worker.log()[-3000:]}"
    page.wait_for_selector("[data-testid=pipeline-status]:has-text('Succeeded')", timeout=30_000)

    assert iris.run.metrics["accuracy"] > 0.8 and iris.run.artifacts.filter(kind="model").exists()
    study = Study.objects.get(pipeline_run=search)
    trials = Run.objects.filter(study=study)
    assert study.status == "succeeded" and trials.count() == 5
    assert search.candidate_run == study.best_run and search.run.artifacts.filter(kind="model").exists()
    assert search.run.metrics["roc_auc"] == study.best_value
    stages = {s.name: s for s in PipelineStage.objects.filter(pipeline_run=search)}
    # The worker runs the registry's register handler; with no deployment_config, deploy is skipped.
    assert stages["train"].peak_rss_bytes > 0 and stages["register"].status == "succeeded"
    assert stages["deploy"].status == "skipped"

    # The pages render, with their Plotly figures drawn by the local plotly.js.
    page.wait_for_selector("#plot-timeline .main-svg")
    page.wait_for_selector("#plot-resources .main-svg")
    _screenshots(page, "pipeline-detail", "#plot-resources .main-svg")
    _page_ok(page, live_server, f"/experiments/runs/{search.run_id}/", "[data-testid=evaluation-plots] .main-svg")
    assert page.locator("[data-testid=child-runs] tbody tr").count() == 5
    screenshot(page, "run-with-trials", width=1366, height=900)
    _page_ok(page, live_server, f"/experiments/runs/{study.best_run_id}/", "[data-testid=curves] .main-svg")
    _screenshots(page, "run-detail", "[data-testid=curves] .main-svg")
    _page_ok(page, live_server, f"/experiments/studies/{study.pk}/", "#plot-history .main-svg")
    page.wait_for_selector("#plot-parallel .main-svg")
    _screenshots(page, "study-detail", "#plot-parallel .main-svg")
    ids = "&".join(f"runs={t.pk}" for t in trials.filter(status="succeeded"))
    _page_ok(page, live_server, f"/experiments/compare/?{ids}&metric=roc_auc", "#plot-parallel .main-svg")
    assert page.locator("td[data-best]").count() > 0
    screenshot(page, "compare", width=1366, height=900)
    _page_ok(page, live_server, f"/experiments/{search.experiment_id}/?trials=1", "[data-testid=run-table]")
    _screenshots(page, "experiment-detail", "[data-testid=run-table]")
    _page_ok(page, live_server, "/experiments/pipelines/", "[data-testid=pipeline-table]")
    screenshot(page, "pipeline-list", width=1366, height=900)
    assert js_errors == []


# A prefork worker of our own, started and killed per test.


@pytest.fixture
def start_worker(celery_worker: CeleryWorker, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `celery worker --pool prefork --concurrency 1` processes on the session's queue (its worker pauses)."""
    started: list[subprocess.Popen] = []
    # The session worker (solo pool) must not take this test's tasks: stop consuming while we run ours.
    from mlops_console.celery import app

    session_worker = [f"{celery_worker.queue}@{socket.gethostname()}"]
    assert app.control.cancel_consumer(celery_worker.queue, destination=session_worker, reply=True, timeout=10)

    def start(**env: str) -> subprocess.Popen:
        name = f"prefork{len(started)}-{celery_worker.queue}"
        log_path = tmp_path / f"{name}.log"
        command = [sys.executable, "-m", "celery", "-A", "mlops_console", "worker", "--pool", "prefork"]
        command += ["--concurrency", "1", "-Q", celery_worker.queue, "-n", f"{name}@%h", "-l", "info"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with open(log_path, "wb") as log:
            # A session of its own, so that killing its process group kills the pool with it (a lost machine).
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**celery_worker.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process.log_path = log_path
        started.append(process)
        wait_for(
            lambda: " ready." in log_path.read_text(errors="replace") or process.poll() is not None,
            timeout=WORKER_START_TIMEOUT,
            what="the prefork worker to start",
        )
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    app.control.add_consumer(celery_worker.queue, destination=session_worker, reply=True, timeout=10)


def _train_running(pipeline_run: PipelineRun) -> PipelineStage | None:
    stage = PipelineStage.objects.get(pipeline_run=pipeline_run, name="train")
    return stage if stage.status == "running" else None


def _pool_child(worker: subprocess.Popen) -> psutil.Process:
    children = psutil.Process(worker.pid).children()
    assert len(children) == 1, children
    return children[0]


def test_a_worker_killed_mid_training_leaves_no_run_stuck(
    transactional_db: None, start_worker: Callable[..., subprocess.Popen], project: object, member: object
) -> None:
    first = start_worker(CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_SECONDS))
    add_version(project, "digits")
    pipeline_run = services.pipeline_run_create(project=project, actor=member, config_text=SLOW)
    stage = wait_for(lambda: _train_running(pipeline_run), timeout=90, what="the train stage to start")
    # Kill while the first boosting rounds run: soon after the stage starts, whatever the machine's speed.
    wait_for(
        lambda: RunMetric.objects.filter(run__pipeline_run=pipeline_run).exists() or None,
        timeout=60,
        what="the first training metrics",
    )
    # Kill the process that is training, then the whole worker with its pool: nothing is left to finish it.
    _pool_child(first).send_signal(signal.SIGKILL)
    time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    # A worker sweeps Redis for unacknowledged messages past their visibility timeout when it starts, then only
    # every 100 s (kombu: a 10 s timer that scans on every 10th tick). The killed worker took the message last
    # before the kill (its main process takes back a message its pool child lost), so a replacement started a
    # timeout after the kill takes it back at once; the takeover waits for a heartbeat 10 s old in any case.
    time.sleep(VISIBILITY_TIMEOUT_SECONDS)
    start_worker(CELERY_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_SECONDS))

    wait_for(lambda: _finished(pipeline_run), timeout=RECOVERY_BOUND_SECONDS, what="the pipeline to end")
    stage.refresh_from_db()
    elapsed = time.monotonic() - killed_at
    assert pipeline_run.status in ("succeeded", "failed"), pipeline_run.status
    if pipeline_run.status == "succeeded":
        assert stage.attempts == 2 and "retrying, attempt 2 of 2" in stage.log
    else:
        assert "stopped" in stage.error and "killed" in stage.error
    assert pipeline_run.run.status == pipeline_run.status
    assert elapsed < RECOVERY_BOUND_SECONDS
    assert not PipelineStage.objects.filter(status="running").exists()


def test_cancelling_stops_the_training_task(
    transactional_db: None, start_worker: Callable[..., subprocess.Popen], project: object, member: object
) -> None:
    start_worker()
    add_version(project, "digits")
    pipeline_run = services.pipeline_run_create(project=project, actor=member, config_text=SLOW)
    wait_for(lambda: _train_running(pipeline_run), timeout=90, what="the train stage to start")
    started = time.monotonic()
    services.pipeline_run_cancel(pipeline_run=pipeline_run, actor=member)
    wait_for(lambda: _finished(pipeline_run), timeout=30, what="the cancellation")
    assert pipeline_run.status == "cancelled"
    assert time.monotonic() - started < 30
    statuses = dict(pipeline_run.stages.values_list("name", "status"))
    assert statuses["train"] == "cancelled" and statuses["evaluate"] == "cancelled"
    assert pipeline_run.run.status == "cancelled"


def test_a_stage_over_its_soft_time_limit_fails(
    transactional_db: None, start_worker: Callable[..., subprocess.Popen], project: object, member: object
) -> None:
    start_worker(EXPERIMENTS_STAGE_SOFT_TIME_LIMIT="2")
    add_version(project, "digits")
    # Far longer than the limit on any machine: the limit stops it after 2 s.
    config = SLOW.replace("n_estimators: 600", "n_estimators: 5000")
    assert "n_estimators: 5000" in config
    pipeline_run = services.pipeline_run_create(project=project, actor=member, config_text=config)
    wait_for(lambda: _finished(pipeline_run), timeout=90, what="the time limit")
    assert pipeline_run.status == "failed"
    train = pipeline_run.stages.get(name="train")
    assert train.error == "the train stage exceeded its time limit of 2 s and was stopped"
