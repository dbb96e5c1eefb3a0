"""The SDK's charts from API-shaped data, and its config files, without a console.

The canary decisions are built by the console's own decision engine (worker.deployments.analysis), in the
record shape the reconciler stores in `strategy_state.decisions`, so the charts read what the API really sends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlops_sdk import (
    ConfigurationError,
    ModelDashboard,
    PipelineConfig,
    plot_error_rates,
    plot_latency_distribution,
)
from mlops_sdk.cli import summary_markdown
from mlops_sdk.types import Deployment, PipelineRun
from worker.deployments.analysis import CanaryThresholds, WindowStats, canary_decide

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def decision(minute: int, percent: int, stable: WindowStats, canary: WindowStats) -> dict:
    outcome = canary_decide(stable=stable, canary=canary, thresholds=CanaryThresholds.from_dict({}))
    at = START + timedelta(minutes=minute)
    return {
        "at": at.isoformat(),
        "window_started_at": at.isoformat(),
        "step": 0,
        "percent": percent,
        **outcome.to_dict(),
    }


@pytest.fixture
def deployment() -> Deployment:
    decisions = [
        decision(1, 10, WindowStats(900, 9, p99_ms=12.0, p50_ms=4.0), WindowStats(100, 1, p99_ms=13.0, p50_ms=4.5)),
        decision(2, 25, WindowStats(750, 0, p99_ms=11.0, p50_ms=3.5), WindowStats(250, 25, p99_ms=40.0, p50_ms=9.0)),
    ]
    return Deployment.from_api(
        {"id": 3, "name": "iris", "phase": "analysing", "strategy_state": {"decisions": decisions}, "generation": 4}
    )


def test_latency_distribution_reads_the_analysis_windows(deployment: Deployment) -> None:
    figure = plot_latency_distribution(deployment)
    traces = {trace.name: trace for trace in figure.data}
    assert set(traces) == {"stable p50", "stable p99", "canary p50", "canary p99"}
    assert traces["canary p99"].y == (13.0, 40.0) and traces["stable p50"].y == (4.0, 3.5)
    assert traces["canary p99"].x[1].startswith("25% @ 2026-12-01T09:02:00")


def test_error_rates_per_window(deployment: Deployment) -> None:
    traces = {trace.name: trace for trace in plot_error_rates(deployment).data}
    assert traces["stable"].y == (pytest.approx(0.01), 0.0)
    assert traces["canary"].y == (pytest.approx(0.01), pytest.approx(0.1))
    assert traces["canary"].x[0] == START + timedelta(minutes=1)


def test_the_seeds_dashboard_class_draws_the_same(deployment: Deployment) -> None:
    figure = ModelDashboard().plot_latency_distribution(deployment)
    assert figure.to_dict()["data"] == plot_latency_distribution(deployment).to_dict()["data"]


def test_a_pause_without_numbers_is_no_window() -> None:
    paused = canary_decide(stable=None, canary=None, thresholds=CanaryThresholds.from_dict({})).to_dict()
    deployment = Deployment.from_api({"id": 1, "name": "x", "strategy_state": {"decisions": [paused]}})
    assert all(len(trace.x) == 0 for trace in plot_error_rates(deployment).data)


def test_a_config_file_splits_the_sdks_keys_from_the_pipelines(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text("project: demo\npoll_interval: 0.5\nexperiment_id: e\ndata_config: {dataset: iris}\n")
    config = PipelineConfig.from_file(path, project="other")
    assert (config.project, config.poll_interval) == ("other", 0.5)
    assert config.experiment == {"experiment_id": "e", "data_config": {"dataset": "iris"}}

    path.write_text("token: mlc_secret\nexperiment_id: e\n")
    with pytest.raises(ConfigurationError, match="keep the API token out of config files"):
        PipelineConfig.from_file(path)


def test_the_markdown_summary_names_the_failed_thresholds() -> None:
    run = PipelineRun.from_api(
        {
            "id": 12,
            "project": "demo",
            "experiment_name": "ci-iris",
            "status": "succeeded",
            "stages": [
                {"name": "train", "position": 3, "status": "succeeded", "duration_seconds": 2.5, "outputs": {}},
                {
                    "name": "evaluate",
                    "position": 4,
                    "status": "succeeded",
                    "duration_seconds": 0.4,
                    "outputs": {
                        "metrics": {"accuracy": 0.6667},
                        "passes_thresholds": False,
                        "threshold_failures": ["accuracy 0.6667 < 0.9"],
                    },
                },
            ],
        }
    )
    text = summary_markdown(run, {"model_version": None, "deployment": None, "metrics": {"accuracy": 0.7}})
    assert text.startswith("## ❌ Pipeline run 12: succeeded")
    assert "- Thresholds: not passed\n  - accuracy 0.6667 < 0.9" in text
    assert "| accuracy | 0.6667 | 0.7 |" in text
    assert "| train | succeeded | 2.5 |\n| evaluate | succeeded | 0.4 |" in text
