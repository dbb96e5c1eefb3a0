"""Use cases of the experiments app. Views, the API, tasks and commands import from here."""

from __future__ import annotations

from apps.experiments.services.pipelines import (
    EXECUTOR_INLINE,
    EXECUTOR_WORKER,
    pipeline_config_from_request,
    pipeline_run_cancel,
    pipeline_run_create,
    pipeline_run_execute_inline,
    pipeline_stage_execute,
    pipeline_stage_revoked,
)
from apps.experiments.services.reaping import pipeline_runs_reap_stale
from apps.experiments.services.studies import study_trial_execute, study_trial_revoked
from apps.experiments.services.tracking import (
    code_version,
    experiment_create,
    experiment_get_or_create,
    package_versions,
    run_artifact_store,
    run_create,
    run_log_metrics,
    run_log_params,
    run_set_terminated,
)

__all__ = [
    "EXECUTOR_INLINE",
    "EXECUTOR_WORKER",
    "code_version",
    "experiment_create",
    "experiment_get_or_create",
    "package_versions",
    "pipeline_config_from_request",
    "pipeline_run_cancel",
    "pipeline_run_create",
    "pipeline_run_execute_inline",
    "pipeline_runs_reap_stale",
    "pipeline_stage_execute",
    "pipeline_stage_revoked",
    "run_artifact_store",
    "run_create",
    "run_log_metrics",
    "run_log_params",
    "run_set_terminated",
    "study_trial_execute",
    "study_trial_revoked",
]
