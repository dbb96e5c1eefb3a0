"""Every service that changes state checks the actor's role itself, so the API, the UI, the CLI, the admin and
tasks share one check: a viewer is refused (PermissionDenied, 403), an outsider does not learn that the object
exists (NotFound, 404), and a refusal writes nothing. What owners and editors may do is tested with each app."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from apps.core import services as core_services
from apps.core.exceptions import NotFound, PermissionDenied
from apps.core.models import AuditEntry, Membership
from apps.datasets import services as dataset_services
from apps.datasets.models import DatasetVersion
from apps.deployments import services as deployment_services
from apps.experiments import services as experiment_services
from apps.experiments.models import Experiment, PipelineRun, Run
from apps.registry import services as registry_services
from apps.registry.models import Webhook
from tests.factories import DatasetFactory, ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db

# The services never reach these: the role is checked before any input is read.
NO_FILE = Path("/nonexistent/never-read.csv")


class World:
    """The objects the services act on, in the shared project, made on first use by its owner and editor."""

    def __init__(self, project: Any, owner: Any, member: Any) -> None:
        self.project, self.owner, self.member = project, owner, member

    @cached_property
    def dataset(self) -> Any:
        return DatasetFactory(project=self.project)

    @cached_property
    def dataset_version(self) -> DatasetVersion:
        return DatasetVersion.objects.create(
            dataset=self.dataset, number=1, sha256="0" * 64, format="csv", file_name="a.csv", size_bytes=1,
            row_count=1, column_count=1, status="ready",
        )  # fmt: skip

    @cached_property
    def experiment(self) -> Experiment:
        return Experiment.objects.create(project=self.project, name="e", name_key="e")

    @cached_property
    def run(self) -> Run:
        return Run.objects.create(experiment=self.experiment, status="running")

    @cached_property
    def pipeline_run(self) -> PipelineRun:
        return PipelineRun.objects.create(
            project=self.project, experiment=self.experiment, config={}, dataset_version=self.dataset_version
        )

    @cached_property
    def versions(self) -> list[Any]:
        model = RegisteredModelFactory(project=self.project, name="iris")
        return [ModelVersionFactory(model=model, number=n) for n in (1, 2)]

    @cached_property
    def promotion(self) -> Any:
        return registry_services.promotion_request_create(
            version=self.versions[0], actor=self.member, target_stage="staging"
        )

    @cached_property
    def webhook(self) -> Webhook:
        return Webhook.objects.create(project=self.project, url="https://hooks.example.com/x")

    @cached_property
    def deployment(self) -> Any:
        return deployment_services.deployment_create(
            project=self.project, name="iris", actor=self.owner, model_version=self.versions[0]
        )


Call = Callable[[World, Any], object]

SERVICES: dict[str, Call] = {
    # core
    "membership_set": lambda w, actor: core_services.membership_set(
        project=w.project, username=w.member.username, role="viewer", actor=actor
    ),
    "membership_remove": lambda w, actor: core_services.membership_remove(
        membership=Membership.objects.get(project=w.project, user=w.member), actor=actor
    ),
    # datasets
    "dataset_create": lambda w, actor: dataset_services.dataset_create(project=w.project, name="d", actor=actor),
    "dataset_update": lambda w, actor: dataset_services.dataset_update(dataset=w.dataset, description="x", actor=actor),
    "dataset_version_create": lambda w, actor: dataset_services.dataset_version_create(
        dataset=w.dataset, path=NO_FILE, file_name="a.csv", actor=actor
    ),
    "dataset_version_revalidate": lambda w, actor: dataset_services.dataset_version_revalidate(
        version=w.dataset_version, actor=actor
    ),
    "dataset_version_split": lambda w, actor: dataset_services.dataset_version_split(
        version=w.dataset_version, actor=actor
    ),
    # experiments
    "experiment_create": lambda w, actor: experiment_services.experiment_create(
        project=w.project, name="x", actor=actor
    ),
    "run_create": lambda w, actor: experiment_services.run_create(experiment=w.experiment, actor=actor),
    "run_log_params": lambda w, actor: experiment_services.run_log_params(run=w.run, actor=actor, params={"a": 1}),
    "run_log_metrics": lambda w, actor: experiment_services.run_log_metrics(
        run=w.run, actor=actor, metrics=[{"name": "loss", "value": 1.0}]
    ),
    "run_set_terminated": lambda w, actor: experiment_services.run_set_terminated(
        run=w.run, actor=actor, status="succeeded"
    ),
    "run_artifact_store": lambda w, actor: experiment_services.run_artifact_store(
        run=w.run, path=NO_FILE, name="a.txt", actor=actor
    ),
    "pipeline_run_create": lambda w, actor: experiment_services.pipeline_run_create(
        project=w.project, actor=actor, config_text="{}"
    ),
    "pipeline_run_cancel": lambda w, actor: experiment_services.pipeline_run_cancel(
        pipeline_run=w.pipeline_run, actor=actor
    ),
    # registry
    "registered_model_create": lambda w, actor: registry_services.registered_model_create(
        project=w.project, name="m", actor=actor
    ),
    "registered_model_update": lambda w, actor: registry_services.registered_model_update(
        model=w.versions[0].model, description="x", actor=actor
    ),
    "model_version_register": lambda w, actor: registry_services.model_version_register(
        project=w.project, model_name="m", bundle_path=NO_FILE, actor=actor
    ),
    "model_version_register_upload": lambda w, actor: registry_services.model_version_register_upload(
        project=w.project, model_name="m", path=NO_FILE, actor=actor
    ),
    "model_version_register_from_run": lambda w, actor: registry_services.model_version_register_from_run(
        run=w.run, actor=actor
    ),
    "promotion_request_create": lambda w, actor: registry_services.promotion_request_create(
        version=w.versions[1], actor=actor, target_stage="staging"
    ),
    "promotion_request_approve": lambda w, actor: registry_services.promotion_request_approve(
        request=w.promotion, actor=actor
    ),
    "promotion_request_reject": lambda w, actor: registry_services.promotion_request_reject(
        request=w.promotion, actor=actor, comment="no"
    ),
    "promotion_request_withdraw": lambda w, actor: registry_services.promotion_request_withdraw(
        request=w.promotion, actor=actor
    ),
    "webhook_create": lambda w, actor: registry_services.webhook_create(
        project=w.project, url="https://hooks.example.com/y", actor=actor
    ),
    "webhook_delete": lambda w, actor: registry_services.webhook_delete(webhook=w.webhook, actor=actor),
    # deployments
    "deployment_create": lambda w, actor: deployment_services.deployment_create(
        project=w.project, name="other", actor=actor, model_version=w.versions[0]
    ),
    "deployment_rollout": lambda w, actor: deployment_services.deployment_rollout(
        deployment=w.deployment, model_version=w.versions[1], strategy="direct", actor=actor
    ),
    "deployment_set_traffic": lambda w, actor: deployment_services.deployment_set_traffic(
        deployment=w.deployment, traffic=[{"model_version": w.versions[0].pk, "weight": 100}], actor=actor
    ),
    "deployment_promote": lambda w, actor: deployment_services.deployment_promote(deployment=w.deployment, actor=actor),
    "deployment_rollback": lambda w, actor: deployment_services.deployment_rollback(
        deployment=w.deployment, actor=actor
    ),
    "deployment_scale": lambda w, actor: deployment_services.deployment_scale(
        deployment=w.deployment, actor=actor, replicas=2
    ),
    "deployment_stop": lambda w, actor: deployment_services.deployment_stop(deployment=w.deployment, actor=actor),
    "deployment_start": lambda w, actor: deployment_services.deployment_start(deployment=w.deployment, actor=actor),
}


@pytest.fixture
def world(project: Any, owner: Any, member: Any, viewer: Any, outsider: Any) -> World:
    return World(project, owner, member)


@pytest.mark.parametrize(("who", "refusal"), [("viewer", PermissionDenied), ("outsider", NotFound)])
@pytest.mark.parametrize("service", SERVICES)
def test_the_service_checks_the_role(
    request: pytest.FixtureRequest, world: World, service: str, who: str, refusal: type[Exception]
) -> None:
    actor = request.getfixturevalue(who)
    with pytest.raises(refusal):
        SERVICES[service](world, actor)
    assert not AuditEntry.objects.filter(actor=actor).exists(), "a refused change writes nothing"
