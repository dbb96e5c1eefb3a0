"""The MLOps console from Python, over its REST API (no Django): pipelines, registry, deployments, monitoring,
A/B tests and charts. See docs/sdk.md."""

from __future__ import annotations

from mlops_sdk.abtest import ABTest, ABTestRecord, ABTestResults
from mlops_sdk.client import Client
from mlops_sdk.deployment import DeploymentStatus, ModelDeployment
from mlops_sdk.errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    Conflict,
    MLOpsError,
    NotFound,
    PermissionDenied,
    PipelineFailed,
    ServerError,
    Timeout,
    ValidationError,
)
from mlops_sdk.monitoring import MonitoringSystem, check_data_drift, check_model_performance
from mlops_sdk.pipeline import MLOpsPipeline, PipelineConfig
from mlops_sdk.plots import (
    ModelDashboard,
    PipelineVisualizer,
    plot_accuracy_trends,
    plot_error_rates,
    plot_execution_timeline,
    plot_latency_distribution,
    plot_pipeline_dag,
    plot_resource_usage,
)
from mlops_sdk.registry import IntegrityError, ModelRegistry

__all__ = [
    "ABTest",
    "ABTestRecord",
    "ABTestResults",
    "APIError",
    "AuthenticationError",
    "Client",
    "ConfigurationError",
    "Conflict",
    "DeploymentStatus",
    "IntegrityError",
    "MLOpsError",
    "MLOpsPipeline",
    "ModelDashboard",
    "ModelDeployment",
    "ModelRegistry",
    "MonitoringSystem",
    "NotFound",
    "PermissionDenied",
    "PipelineConfig",
    "PipelineFailed",
    "PipelineVisualizer",
    "ServerError",
    "Timeout",
    "ValidationError",
    "check_data_drift",
    "check_model_performance",
    "plot_accuracy_trends",
    "plot_error_rates",
    "plot_execution_timeline",
    "plot_latency_distribution",
    "plot_pipeline_dag",
    "plot_resource_usage",
]
