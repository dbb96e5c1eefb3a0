"""`mlops`: the console from a shell or a CI job (MLOPS_URL, MLOPS_TOKEN and MLOPS_PROJECT from the environment).

mlops pipeline run --config configs/iris.yaml --wait [--id-file run-id.txt]
    exit 0 only when the run succeeded and its model passed the evaluation thresholds; 1 when it failed or
    missed a threshold; 2 when the console refused the request (the message names the field)
mlops promotion request --model-version iris-classifier:3 --stage production [--comment "…"]
mlops promotion request --model-version iris-classifier:3 --alias champion
mlops run summary <pipeline run id> --format markdown      # for $GITHUB_STEP_SUMMARY or a merge request note
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlops_sdk.client import Client
from mlops_sdk.errors import APIError, MLOpsError
from mlops_sdk.pipeline import MLOpsPipeline, PipelineConfig
from mlops_sdk.registry import ModelRegistry
from mlops_sdk.types import PipelineRun

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")
    sys.stderr.flush()


def _progress(pipeline_run: PipelineRun) -> None:
    stages = " ".join(f"{stage.name}:{stage.status}" for stage in pipeline_run.stages)
    _err(f"pipeline run {pipeline_run.id} {pipeline_run.status} [{stages}]")


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, project=args.project)


def pipeline_run(args: argparse.Namespace) -> int:
    config = PipelineConfig.from_file(args.config, project=args.project, url=args.url)
    if args.poll_interval is not None:
        config.poll_interval = args.poll_interval
    pipeline = MLOpsPipeline(config)
    started = pipeline.start(stage=args.stage)
    _err(f"started pipeline run {started.id} in project {started.project}")
    if args.id_file:
        Path(args.id_file).write_text(f"{started.id}\n")
    if not args.wait:
        _out(str(started.id))
        return EXIT_OK
    finished = pipeline.wait(started, on_progress=_progress, timeout=args.timeout)
    _out(str(finished.id))
    if finished.status != "succeeded":
        failed = [stage for stage in finished.stages if stage.status == "failed"]
        reason = f"{failed[0].name}: {failed[0].error}" if failed else finished.error
        _err(f"pipeline run {finished.id} {finished.status}: {reason}")
        return EXIT_FAILED
    if not MLOpsPipeline.passes_thresholds(finished):
        failures = finished.outputs("evaluate").get("threshold_failures") or ["the evaluate stage did not run"]
        _err(f"pipeline run {finished.id} did not pass its thresholds: {'; '.join(map(str, failures))}")
        return EXIT_FAILED
    _err(f"pipeline run {finished.id} succeeded and passed its thresholds")
    return EXIT_OK


def promotion_request(args: argparse.Namespace) -> int:
    client = _client(args)
    registry = ModelRegistry(args.project, client=client)
    if args.pipeline_run is not None:
        pipeline = MLOpsPipeline(PipelineConfig(project=args.project), client=client)
        version, _ = pipeline.results(pipeline.get(args.pipeline_run))
        if version is None:
            _err(f"error: pipeline run {args.pipeline_run} registered no model version")
            return EXIT_FAILED
        reference: str | int = version.id
    else:
        reference = int(args.model_version) if args.model_version.isdigit() else args.model_version
    promotion = registry.request_promotion(reference, stage=args.stage, alias=args.alias, comment=args.comment)
    target = f"stage {promotion.target_stage}" if promotion.target_stage else f"alias {promotion.target_alias}"
    _err(
        f"promotion request {promotion.id}: {promotion.model_name}:{promotion.version_number} to {target}, "
        f"{promotion.status}"
    )
    _out(json.dumps({"id": promotion.id, "status": promotion.status}))
    return EXIT_OK


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_markdown(pipeline_run: PipelineRun, details: dict[str, Any]) -> str:
    evaluated = pipeline_run.outputs("evaluate")
    passes = MLOpsPipeline.passes_thresholds(pipeline_run)
    icon = "✅" if passes else "❌"
    lines = [
        f"## {icon} Pipeline run {pipeline_run.id}: {pipeline_run.status}",
        "",
        f"- Project: `{pipeline_run.project}`, experiment `{pipeline_run.experiment_name}`",
        f"- Thresholds: {'passed' if passes else 'not passed'}",
    ]
    for failure in evaluated.get("threshold_failures") or []:
        lines.append(f"  - {failure}")
    if details.get("model_version"):
        lines.append(f"- Registered: `{details['model_version']}`")
    if details.get("deployment"):
        lines.append(f"- Deployment: `{details['deployment']}`")
    if pipeline_run.error:
        lines.append(f"- Error: {pipeline_run.error}")
    holdout = evaluated.get("metrics") or {}
    training = details.get("metrics") or {}
    names = sorted(set(holdout) | set(training))
    if names:
        lines += ["", "| Metric | Holdout (evaluate) | Training run |", "| --- | ---: | ---: |"]
        lines += [
            f"| {name} | {_number(holdout.get(name, '–'))} | {_number(training.get(name, '–'))} |" for name in names
        ]
    lines += ["", "| Stage | Status | Seconds |", "| --- | --- | ---: |"]
    for stage in sorted(pipeline_run.stages, key=lambda stage: stage.position):
        seconds = f"{stage.duration_seconds:.1f}" if stage.duration_seconds is not None else "–"
        lines.append(f"| {stage.name} | {stage.status} | {seconds} |")
    return "\n".join(lines) + "\n"


def run_summary(args: argparse.Namespace) -> int:
    pipeline = MLOpsPipeline(PipelineConfig(project=args.project), client=_client(args))
    finished = pipeline.get(args.id)
    version, deployment = pipeline.results(finished)
    run = pipeline.training_run(finished)
    details = {
        "model_version": str(version) if version else None,
        "deployment": deployment.name if deployment else None,
        "metrics": run.metrics if run else {},
    }
    if args.format == "json":
        evaluated = finished.outputs("evaluate")
        _out(
            json.dumps(
                {
                    "id": finished.id,
                    "status": finished.status,
                    "passes_thresholds": MLOpsPipeline.passes_thresholds(finished),
                    "holdout_metrics": evaluated.get("metrics") or {},
                    **details,
                },
                indent=2,
                sort_keys=True,
            )
        )
    else:
        _out(summary_markdown(finished, details))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mlops", description="Drive the MLOps console from a shell or a CI job.")
    root.add_argument("--url", help="The console's URL (default: $MLOPS_URL).")
    root.add_argument("--project", help="The project's slug (default: $MLOPS_PROJECT, or the config's `project`).")
    root.add_argument("-v", "--verbose", action="store_true", help="Log every HTTP retry.")
    groups = root.add_subparsers(dest="group", required=True)

    pipeline = groups.add_parser("pipeline", help="Pipeline runs.").add_subparsers(dest="command", required=True)
    run = pipeline.add_parser("run", help="Start a pipeline run from a config file.")
    run.add_argument("--config", required=True, help="A YAML (or JSON) pipeline config.")
    run.add_argument("--stage", help="Run only up to this stage (e.g. training, registration).")
    run.add_argument("--wait", action="store_true", help="Follow the run; the exit code says whether it passed.")
    run.add_argument("--timeout", type=float, default=3600.0, help="Seconds to wait at most (default 3600).")
    run.add_argument("--poll-interval", type=float, default=None, help="Seconds between polls (default 2).")
    run.add_argument("--id-file", help="Write the pipeline run's id to this file.")
    run.set_defaults(handler=pipeline_run)

    promotion = groups.add_parser("promotion", help="Promotion requests.").add_subparsers(dest="command", required=True)
    request = promotion.add_parser("request", help="Ask approvers to move a version to a stage or an alias.")
    which = request.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-version", help="name:number, name:label, name@alias, or an id.")
    which.add_argument("--pipeline-run", type=int, help="The version this pipeline run registered.")
    target = request.add_mutually_exclusive_group(required=True)
    target.add_argument("--stage", choices=["staging", "production", "archived"])
    target.add_argument("--alias", help="champion, challenger, or another alias name.")
    request.add_argument("--comment", default="", help="Why (shown to the approvers).")
    request.set_defaults(handler=promotion_request)

    runs = groups.add_parser("run", help="Pipeline run reports.").add_subparsers(dest="command", required=True)
    summary = runs.add_parser("summary", help="A pipeline run's metrics and stages.")
    summary.add_argument("id", type=int, help="The pipeline run's id (what `mlops pipeline run` prints).")
    summary.add_argument("--format", choices=["markdown", "json"], default="markdown")
    summary.set_defaults(handler=run_summary)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.handler(args)
    except APIError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    except (MLOpsError, OSError, ValueError) as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
