"""The role matrix (issue 13, item 20): every state-changing endpoint, API and HTML, tried as viewer, editor,
approver, owner and outsider.

Endpoints are enumerated from the URL resolver: each route name must have an entry below, either cases (the
lowest role allowed, and a request that such a role gets through with) or the reason it is not a project's
state-changing endpoint. A new endpoint without an entry fails `test_every_endpoint_has_a_matrix_entry`.

For each case and role, in a savepoint rolled back after the request (so each role meets the same state): a
member below the role gets 403 and writes no audit entry, an outsider gets 404 (it must not learn the object
exists) and writes nothing, and the roles at or above it get through (a success, or for `passes="checked"` a
4xx naming the input: the role check came first and let them in).

Where a project is chosen in a form (the HTML create pages), the project's choices are the user's editable
projects: a member below the role, or an outsider, gets the form back naming `project`, and nothing is written.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

import pytest
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from apps.abtests import services as abtest_services
from apps.abtests.models import ABTest
from apps.alerts import services as alert_services
from apps.alerts.models import AlertChannel, AlertRule, Silence
from apps.core.choices import ProjectRole
from apps.core.models import AuditEntry, Membership
from apps.datasets.models import DatasetVersion
from apps.deployments import services as deployment_services
from apps.experiments.models import Experiment, PipelineRun, Run
from apps.monitoring.models import DriftReport
from apps.registry import services as registry_services
from apps.registry.models import Webhook
from apps.telemetry.services import IngestSource, predictions_ingest
from tests.factories import DatasetFactory, ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db

ROLES = ("viewer", "member", "approver", "owner")  # member is the editor
RANK = {"viewer": ProjectRole.VIEWER, "member": ProjectRole.EDITOR, "approver": ProjectRole.APPROVER}
RANK["owner"] = ProjectRole.OWNER
CSV = b"x,y\n1,a\n2,b\n3,a\n4,b\n"
# A webhook URL whose host needs no DNS lookup (none here) and is not private.
PUBLIC_URL = "https://93.184.216.34/hook"


class World:
    """The objects the endpoints act on, in the shared project, made on first use."""

    def __init__(self, project: Any, users: dict[str, Any]) -> None:
        self.project, self.users = project, users

    @cached_property
    def dataset(self) -> Any:
        return DatasetFactory(project=self.project, created_by=self.users["owner"])

    @cached_property
    def dataset_version(self) -> DatasetVersion:
        return DatasetVersion.objects.create(
            dataset=self.dataset, number=1, sha256="0" * 64, format="csv", file_name="a.csv", size_bytes=1,
            row_count=4, column_count=2, status="ready",
            schema=[{"name": "x", "dtype": "int64"}, {"name": "y", "dtype": "object"}],
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
            version=self.versions[0], actor=self.users["member"], target_stage="staging"
        )

    @cached_property
    def webhook(self) -> Webhook:
        return Webhook.objects.create(project=self.project, url="https://hooks.example.com/x")

    @cached_property
    def deployment(self) -> Any:
        return deployment_services.deployment_create(
            project=self.project, name="iris", actor=self.users["owner"], model_version=self.versions[0]
        )

    @cached_property
    def logged_request(self) -> str:
        """One live prediction of the deployment, to label."""
        deployment = self.deployment
        source = IngestSource(
            deployment_id=deployment.pk,
            project_id=self.project.pk,
            version_ids=frozenset({self.versions[0].pk}),
        )
        event = {
            "request_id": "r-1",
            "event_id": "e-1",
            "deployment_id": deployment.pk,
            "version_id": self.versions[0].pk,
            "outputs": ["a"],
            "probabilities": [[0.9, 0.1]],
            "status": 200,
            "timestamp": timezone.now().isoformat(),
        }
        assert predictions_ingest(source=source, events=[event]).accepted == 1
        return "r-1"

    @cached_property
    def drift_report(self) -> DriftReport:
        return DriftReport.objects.create(
            deployment=self.deployment,
            model_version=self.versions[0],
            window_start=timezone.now(),
            window_end=timezone.now(),
        )

    def _abtest_draft(self) -> ABTest:
        control, treatment = self.versions
        return abtest_services.abtest_create(
            deployment=self.deployment, actor=self.users["member"], name="v2 against v1", control=control.pk,
            treatments=[treatment.pk], split=[50, 50], primary_metric="conversion", mde=0.05, baseline=0.3,
        )  # fmt: skip

    @cached_property
    def abtest(self) -> ABTest:
        """An A/B test in draft on the deployment (v1 the control, v2 the treatment)."""
        return self._abtest_draft()

    @cached_property
    def running_abtest(self) -> ABTest:
        return abtest_services.abtest_start(abtest=self._abtest_draft(), actor=self.users["member"])

    @cached_property
    def stopped_abtest(self) -> ABTest:
        """Stopped with the treatment chosen as the winner: its promotion can be requested."""
        running = abtest_services.abtest_start(abtest=self._abtest_draft(), actor=self.users["member"])
        return abtest_services.abtest_stop(abtest=running, actor=self.users["member"], winner=self.versions[1].pk)

    @cached_property
    def alert_channel(self) -> AlertChannel:
        """An email channel: its test notification needs no network (the test settings' mail backend)."""
        return alert_services.alert_channel_create(
            project=self.project, actor=self.users["owner"], name="ops", kind="email",
            config={"addresses": ["ops@example.com"]},
        )  # fmt: skip

    @cached_property
    def alert_rule(self) -> AlertRule:
        return alert_services.alert_rule_create(
            project=self.project, actor=self.users["owner"], deployment=self.deployment,
            channels=[self.alert_channel], name="errors", figure="error_rate", comparator="gt", threshold=0.01,
        )  # fmt: skip

    @cached_property
    def silence(self) -> Silence:
        return alert_services.silence_create(
            project=self.project, actor=self.users["owner"], comment="deploying", rule=self.alert_rule,
            ends_at=timezone.now() + timedelta(hours=1),
        )  # fmt: skip

    def membership(self, username: str) -> Membership:
        return Membership.objects.get(project=self.project, user__username=username)


@dataclass(frozen=True)
class Case:
    """One request: `role` is the lowest allowed. `passes`: "success" (a 2xx/3xx) or "checked" (a 4xx naming
    the input is fine: the body is expensive to make valid, and the role check came before it). `form`: the
    project is picked in a form whose choices are the user's projects with the role (see the module note).
    `picked`: the API body field naming the object (a project, an experiment, a version) the request acts in:
    to an outsider it does not exist, so the answer is a 400 naming that field, as for any unknown id."""

    method: str
    path: Callable[[World], str]
    role: str
    body: Callable[[World], Any] = lambda w: {}
    api: bool = True
    passes: str = "success"
    form: bool = False
    multipart: bool = False
    picked: str | None = None


def api(method: str, path: Callable[[World], str], role: str, body: Callable[[World], Any] = lambda w: {}, **kw: Any):
    return Case(method, path, role, body, api=True, **kw)


def html(path: Callable[[World], str], role: str, body: Callable[[World], Any] = lambda w: {}, **kw: Any) -> Case:
    return Case("post", path, role, body, api=False, **kw)


def upload(name: str = "data.csv", content: bytes = CSV) -> io.BytesIO:
    file = io.BytesIO(content)
    file.name = name
    return file


def generation(w: World) -> dict:
    return {"generation": w.deployment.generation}


def alert_rule_body(w: World) -> dict:
    return {"name": "p99", "figure": "latency_p99", "comparator": "gt", "threshold": 500}


def alert_rule_form(w: World) -> dict:
    """The rule editor's fields as the page posts them (the rule on the deployment, emailing the channel)."""
    return {
        "name": "errors", "deployment": w.deployment.pk, "figure": "error_rate", "comparator": "gt",
        "threshold": "0.05", "window_seconds": "300", "for_seconds": "0", "keep_firing_for_seconds": "0",
        "repeat_interval_seconds": "14400", "send_resolved": "on", "severity": "warning", "labels": "{}",
        "channels": [w.alert_channel.pk], "enabled": "on", "retrain_cooldown_seconds": "86400",
    }  # fmt: skip


V = "api/v1"
# Route name (namespace:name for the HTML apps) -> the cases of its state-changing methods.
MATRIX: dict[str, list[Case]] = {
    # core: a project's settings and members (owners)
    "project-detail": [
        api("patch", lambda w: f"/{V}/projects/{w.project.slug}/", "owner", lambda w: {"description": "x"}),
    ],
    "project-members": [
        api(
            "post",
            lambda w: f"/{V}/projects/{w.project.slug}/members/",
            "owner",
            lambda w: {"username": "viewer", "role": "editor"},
        ),
    ],
    "project-remove-member": [
        api("delete", lambda w: f"/{V}/projects/{w.project.slug}/members/viewer/", "owner"),
    ],
    "core:project-detail": [
        html(lambda w: f"/projects/{w.project.slug}/", "owner", lambda w: {"username": "viewer", "role": "editor"}),
    ],
    "core:project-retention": [
        html(
            lambda w: f"/projects/{w.project.slug}/retention/",
            "owner",
            lambda w: {"prediction_log_retention_days": 10, "prediction_rollup_retention_days": 100},
        ),
    ],
    "core:member-remove": [
        html(lambda w: f"/projects/{w.project.slug}/members/{w.membership('viewer').pk}/remove/", "owner"),
    ],
    # datasets (editors)
    "dataset-list": [
        api(
            "post",
            lambda w: f"/{V}/datasets/",
            "member",
            lambda w: {"project": w.project.slug, "name": "new"},
            picked="project",
        ),
    ],
    "dataset-detail": [
        api("patch", lambda w: f"/{V}/datasets/{w.dataset.pk}/", "member", lambda w: {"description": "x"}),
    ],
    "dataset-versions": [
        api(
            "post",
            lambda w: f"/{V}/datasets/{w.dataset.pk}/versions/",
            "member",
            lambda w: {"file": upload()},
            multipart=True,
        ),
    ],
    "dataset-version-revalidate": [
        api("post", lambda w: f"/{V}/dataset-versions/{w.dataset_version.pk}/revalidate/", "member"),
    ],
    "dataset-version-splits": [
        api("post", lambda w: f"/{V}/dataset-versions/{w.dataset_version.pk}/splits/", "member", passes="checked"),
    ],
    "datasets:dataset-create": [
        html(
            lambda w: "/datasets/new/",
            "member",
            lambda w: {"project": w.project.pk, "name": "new", "file": upload()},
            form=True,
        ),
    ],
    "datasets:dataset-upload": [
        html(lambda w: f"/datasets/{w.dataset.pk}/upload/", "member", lambda w: {"file": upload()}),
    ],
    "datasets:dataset-rules": [
        html(lambda w: f"/datasets/{w.dataset.pk}/rules/", "member", lambda w: {"rules": "{}"}),
    ],
    "datasets:version-revalidate": [
        html(lambda w: f"/datasets/{w.dataset.pk}/versions/{w.dataset_version.number}/revalidate/", "member"),
    ],
    # experiments (editors)
    "experiment-list": [
        api(
            "post",
            lambda w: f"/{V}/experiments/",
            "member",
            lambda w: {"project": w.project.slug, "name": "new"},
            picked="project",
        ),
    ],
    "run-list": [
        api("post", lambda w: f"/{V}/runs/", "member", lambda w: {"experiment": w.experiment.pk}, picked="experiment"),
    ],
    "run-log-metrics": [
        api(
            "post",
            lambda w: f"/{V}/runs/{w.run.pk}/log-metrics/",
            "member",
            lambda w: {"metrics": [{"name": "loss", "value": 1.0}]},
        ),
    ],
    "run-log-params": [
        api("post", lambda w: f"/{V}/runs/{w.run.pk}/log-params/", "member", lambda w: {"params": {"a": 1}}),
    ],
    "run-set-terminated": [
        api("post", lambda w: f"/{V}/runs/{w.run.pk}/set-terminated/", "member", lambda w: {"status": "succeeded"}),
    ],
    "pipeline-run-list": [
        api(
            "post",
            lambda w: f"/{V}/pipeline-runs/",
            "member",
            lambda w: {"project": w.project.slug, "config": {}},
            passes="checked",
            picked="project",
        ),
    ],
    "pipeline-run-cancel": [
        api("post", lambda w: f"/{V}/pipeline-runs/{w.pipeline_run.pk}/cancel/", "member"),
    ],
    "experiments:experiment-list": [
        html(lambda w: "/experiments/", "member", lambda w: {"project": w.project.slug, "name": "new"}, form=True),
    ],
    "experiments:pipeline-list": [
        html(
            lambda w: "/experiments/pipelines/",
            "member",
            lambda w: {"project": w.project.slug, "config_yaml": "{}"},
            form=True,
            passes="checked",
        ),
    ],
    "experiments:pipeline-cancel": [
        html(lambda w: f"/experiments/pipelines/{w.pipeline_run.pk}/cancel/", "member"),
    ],
    # registry: editors register and request, approvers decide, owners manage webhooks
    "registered-model-list": [
        api(
            "post",
            lambda w: f"/{V}/registered-models/",
            "member",
            lambda w: {"project": w.project.slug, "name": "m"},
            picked="project",
        ),
    ],
    "registered-model-detail": [
        api("patch", lambda w: f"/{V}/registered-models/{w.versions[0].model_id}/", "member", lambda w: {"tags": {}}),
    ],
    "model-version-list": [
        api(
            "post",
            lambda w: f"/{V}/model-versions/",
            "member",
            lambda w: {"project": w.project.slug, "model_name": "iris", "file": upload("model.zip", b"not a zip")},
            multipart=True,
            passes="checked",
            picked="project",
        ),
    ],
    "model-version-aliases": [
        api(
            "post",
            lambda w: f"/{V}/model-versions/{w.versions[0].pk}/aliases/",
            "member",
            lambda w: {"name": "champion"},
        ),
    ],
    "promotion-request-list": [
        api(
            "post",
            lambda w: f"/{V}/promotion-requests/",
            "member",
            lambda w: {"version": w.versions[1].pk, "target_stage": "staging"},
            picked="version",
        ),
    ],
    "promotion-request-approve": [
        api("post", lambda w: f"/{V}/promotion-requests/{w.promotion.pk}/approve/", "approver"),
    ],
    "promotion-request-reject": [
        api(
            "post",
            lambda w: f"/{V}/promotion-requests/{w.promotion.pk}/reject/",
            "approver",
            lambda w: {"comment": "no"},
        ),
    ],
    "webhook-list": [
        api(
            "post",
            lambda w: f"/{V}/webhooks/",
            "owner",
            lambda w: {"project": w.project.slug, "url": PUBLIC_URL},
            picked="project",
        ),
    ],
    "webhook-detail": [
        api("delete", lambda w: f"/{V}/webhooks/{w.webhook.pk}/", "owner"),
    ],
    "registry:model-register": [
        html(
            lambda w: "/models/register/",
            "member",
            lambda w: {"project": w.project.pk, "model_name": "m", "file": upload("model.zip", b"not a zip")},
            form=True,
            passes="checked",
        ),
    ],
    "registry:version-load-test": [
        html(lambda w: f"/models/{w.versions[0].model_id}/versions/1/load-test/", "viewer", passes="checked"),
    ],
    "registry:request-create": [
        html(
            lambda w: f"/models/{w.versions[1].model_id}/versions/2/request/",
            "member",
            lambda w: {"target_stage": "staging"},
        ),
    ],
    "registry:request-approve": [html(lambda w: f"/approvals/{w.promotion.pk}/approve/", "approver")],
    "registry:request-reject": [
        html(lambda w: f"/approvals/{w.promotion.pk}/reject/", "approver", lambda w: {"comment": "no"}),
    ],
    "registry:webhook-list": [
        html(
            lambda w: "/webhooks/",
            "owner",
            lambda w: {"project": w.project.pk, "kind": "webhook", "url": PUBLIC_URL},
            form=True,
        ),
    ],
    "registry:webhook-delete": [html(lambda w: f"/webhooks/{w.webhook.pk}/delete/", "owner")],
    # deployments (editors; trying a prediction: any member)
    "deployment-list": [
        api(
            "post",
            lambda w: f"/{V}/deployments/",
            "member",
            lambda w: {"project": w.project.slug, "name": "other", "model_version": w.versions[0].pk},
            picked="project",
        ),
    ],
    "deployment-detail": [api("delete", lambda w: f"/{V}/deployments/{w.deployment.pk}/", "member")],
    "deployment-promote": [
        api("post", lambda w: f"/{V}/deployments/{w.deployment.pk}/promote/", "member", generation, passes="checked"),
    ],
    "deployment-rollback": [
        api("post", lambda w: f"/{V}/deployments/{w.deployment.pk}/rollback/", "member", generation, passes="checked"),
    ],
    "deployment-rollout": [
        api(
            "post",
            lambda w: f"/{V}/deployments/{w.deployment.pk}/rollout/",
            "member",
            lambda w: {**generation(w), "model_version": w.versions[1].pk, "strategy": "direct"},
        ),
    ],
    "deployment-scale": [
        api(
            "post",
            lambda w: f"/{V}/deployments/{w.deployment.pk}/scale/",
            "member",
            lambda w: {**generation(w), "replicas": 2},
        ),
    ],
    "deployment-start": [
        api("post", lambda w: f"/{V}/deployments/{w.deployment.pk}/start/", "member", generation, passes="checked"),
    ],
    "deployment-traffic": [
        api(
            "post",
            lambda w: f"/{V}/deployments/{w.deployment.pk}/traffic/",
            "member",
            lambda w: {**generation(w), "traffic": [{"model_version": w.versions[0].pk, "weight": 100}]},
        ),
    ],
    "deployments:deployment-promote": [
        html(lambda w: f"/deployments/{w.deployment.pk}/promote/", "member", generation, passes="checked"),
    ],
    "deployments:deployment-stop": [html(lambda w: f"/deployments/{w.deployment.pk}/stop/", "member", generation)],
    "deployments:deployment-start": [
        html(lambda w: f"/deployments/{w.deployment.pk}/start/", "member", generation, passes="checked")
    ],
    "deployments:deployment-rollback": [
        html(lambda w: f"/deployments/{w.deployment.pk}/rollback/", "member", generation, passes="checked"),
    ],
    "deployments:deployment-scale": [
        html(lambda w: f"/deployments/{w.deployment.pk}/scale/", "member", lambda w: {**generation(w), "replicas": 2}),
    ],
    "deployments:deployment-rollout": [
        html(
            lambda w: f"/deployments/{w.deployment.pk}/rollout/",
            "member",
            lambda w: {**generation(w), "model_version": w.versions[1].pk, "strategy": "direct"},
        ),
    ],
    "deployments:deployment-try": [
        html(
            lambda w: f"/deployments/{w.deployment.pk}/try/",
            "viewer",
            lambda w: {"body": '{"inputs": {"x": [1]}}', "protocol": "mlflow"},
            passes="checked",
        ),
    ],
    # monitoring (editors)
    "drift-report-list": [
        api(
            "post",
            lambda w: f"/{V}/drift-reports/",
            "member",
            lambda w: {"deployment": w.deployment.pk, "window": "1h"},
            passes="checked",
        ),
    ],
    "drift-reference-list": [
        api(
            "post",
            lambda w: f"/{V}/drift-references/",
            "member",
            lambda w: {"deployment": w.deployment.pk, "source": "training"},
            passes="checked",
        ),
    ],
    "monitoring:report-run": [
        html(
            lambda w: f"/monitoring/drift/run/{w.deployment.pk}/",
            "member",
            lambda w: {"window": "1h"},
            passes="checked",
        ),
    ],
    "drift-settings": [
        api(
            "put",
            lambda w: f"/{V}/drift-settings/{w.deployment.pk}/",
            "member",
            lambda w: {"columns": {"x": {"test": "psi", "threshold": 0.2}}, "drift_share": 0.4},
        ),
    ],
    "monitoring:drift-settings": [
        html(
            lambda w: f"/monitoring/drift/settings/{w.deployment.pk}/",
            "member",
            lambda w: {"test:x": "psi", "threshold:x": "0.2", "drift_share": "0.4", "prediction_drift": "on"},
        ),
    ],
    # abtests: editors create, start, stop, read out, post outcomes and request the winner's promotion; the power
    # calculator changes nothing (any member)
    "abtest-list": [
        api(
            "post",
            lambda w: f"/{V}/abtests/",
            "member",
            lambda w: {
                "deployment": w.deployment.pk,
                "name": "t",
                "control": w.versions[0].pk,
                "treatments": [w.versions[1].pk],
                "split": [50, 50],
                "primary_metric": "conversion",
                "mde": 0.05,
                "baseline": 0.3,
            },
        ),
    ],
    "abtest-power": [
        api(
            "post",
            lambda w: f"/{V}/abtests/power/",
            "viewer",
            lambda w: {"deployment": w.deployment.pk, "primary_metric": "conversion", "baseline": 0.3, "mde": 0.05},
        ),
    ],
    "abtest-start": [
        api(
            "post",
            lambda w: f"/{V}/abtests/{w.abtest.pk}/start/",
            "member",
            lambda w: {"expected_generation": w.deployment.generation},
        ),
    ],
    "abtest-stop": [api("post", lambda w: f"/{V}/abtests/{w.running_abtest.pk}/stop/", "member")],
    "abtest-readout": [api("post", lambda w: f"/{V}/abtests/{w.running_abtest.pk}/readout/", "member")],
    "abtest-outcomes": [
        api(
            "post",
            lambda w: f"/{V}/abtests/{w.running_abtest.pk}/outcomes/",
            "member",
            lambda w: [{"request_id": "r-unknown", "conversion": 1}],
        ),
    ],
    "abtest-promote": [
        api("post", lambda w: f"/{V}/abtests/{w.stopped_abtest.pk}/promote/", "member", lambda w: {"comment": "c"}),
    ],
    "abtests:abtest-create": [
        html(
            lambda w: f"/abtests/new/?deployment={w.deployment.pk}",
            "member",
            lambda w: {
                "name": "t",
                "control": w.versions[0].pk,
                "treatments": [w.versions[1].pk],
                "split": "50,50",
                "primary_metric": "conversion",
                "baseline": "0.3",
                "mde": "0.05",
                "alpha": "0.05",
                "power": "0.8",
                "sequential": "on",
                "assignment_key": "header",
            },
        ),
    ],
    "abtests:abtest-start": [html(lambda w: f"/abtests/{w.abtest.pk}/start/", "member")],
    "abtests:abtest-stop": [html(lambda w: f"/abtests/{w.running_abtest.pk}/stop/", "member")],
    "abtests:abtest-readout": [html(lambda w: f"/abtests/{w.running_abtest.pk}/readout/", "member")],
    "abtests:abtest-promote": [html(lambda w: f"/abtests/{w.stopped_abtest.pk}/promote/", "member")],
    # alerts: editors manage rules, silences and channels (and send test notifications); the rest reads
    "alert-rule-list": [
        api(
            "post",
            lambda w: f"/{V}/alert-rules/",
            "member",
            lambda w: {**alert_rule_body(w), "project": w.project.slug, "deployment": w.deployment.pk},
            picked="project",
        ),
        # A key the API does not know: the role is checked before the 400 naming it.
        api(
            "post",
            lambda w: f"/{V}/alert-rules/",
            "member",
            lambda w: {**alert_rule_body(w), "project": w.project.slug, "deployment": w.deployment.pk, "colour": 1},
            passes="checked",
            picked="project",
        ),
    ],
    "alert-rule-detail": [
        api("patch", lambda w: f"/{V}/alert-rules/{w.alert_rule.pk}/", "member", lambda w: {"threshold": 0.5}),
        api(
            "patch",
            lambda w: f"/{V}/alert-rules/{w.alert_rule.pk}/",
            "member",
            lambda w: {"colour": 1},
            passes="checked",
        ),
        api("delete", lambda w: f"/{V}/alert-rules/{w.alert_rule.pk}/", "member"),
    ],
    "alert-rule-defaults": [
        api("post", lambda w: f"/{V}/alert-rules/defaults/", "member", lambda w: {"deployment": w.deployment.pk}),
    ],
    "alert-silence-list": [
        api(
            "post",
            lambda w: f"/{V}/alert-silences/",
            "member",
            lambda w: {"project": w.project.slug, "rule": w.alert_rule.pk, "hours": 1, "comment": "deploying"},
            picked="project",
        ),
        api(
            "post",
            lambda w: f"/{V}/alert-silences/",
            "member",
            lambda w: {"project": w.project.slug, "rule": w.alert_rule.pk, "comment": "no end given"},
            passes="checked",
            picked="project",
        ),
    ],
    "alert-silence-expire": [api("post", lambda w: f"/{V}/alert-silences/{w.silence.pk}/expire/", "member")],
    "alert-channel-list": [
        api(
            "post",
            lambda w: f"/{V}/alert-channels/",
            "member",
            lambda w: {"project": w.project.slug, "name": "new", "kind": "email", "addresses": ["a@example.com"]},
            picked="project",
        ),
    ],
    "alert-channel-detail": [api("delete", lambda w: f"/{V}/alert-channels/{w.alert_channel.pk}/", "member")],
    "alert-channel-test": [api("post", lambda w: f"/{V}/alert-channels/{w.alert_channel.pk}/test/", "member")],
    "alerts:rule-create": [
        html(
            lambda w: f"/alerts/projects/{w.project.slug}/rules/new/",
            "member",
            lambda w: {**alert_rule_form(w), "name": "p99"},
        ),
        # Invalid forms: the page comes back with the errors to an editor, a 403 to a viewer.
        html(lambda w: f"/alerts/projects/{w.project.slug}/rules/new/", "member", passes="checked"),
    ],
    "alerts:rule-edit": [
        html(lambda w: f"/alerts/rules/{w.alert_rule.pk}/edit/", "member", alert_rule_form),
        html(lambda w: f"/alerts/rules/{w.alert_rule.pk}/edit/", "member", passes="checked"),
    ],
    "alerts:rule-delete": [html(lambda w: f"/alerts/rules/{w.alert_rule.pk}/delete/", "member")],
    "alerts:rule-defaults": [html(lambda w: f"/alerts/deployments/{w.deployment.pk}/defaults/", "member")],
    "alerts:silence-create": [
        html(
            lambda w: "/alerts/silences/new/",
            "member",
            lambda w: {"rule": w.alert_rule.pk, "hours": "1", "comment": "deploying", "matchers": "{}"},
        ),
        html(lambda w: "/alerts/silences/new/", "member", lambda w: {"rule": w.alert_rule.pk}, passes="checked"),
    ],
    "alerts:silence-expire": [html(lambda w: f"/alerts/silences/{w.silence.pk}/expire/", "member")],
    "alerts:channel-create": [
        html(
            lambda w: f"/alerts/projects/{w.project.slug}/channels/new/",
            "member",
            lambda w: {"name": "new", "kind": "email", "addresses": "a@example.com"},
        ),
        html(lambda w: f"/alerts/projects/{w.project.slug}/channels/new/", "member", passes="checked"),
    ],
    "alerts:channel-test": [html(lambda w: f"/alerts/channels/{w.alert_channel.pk}/test/", "member")],
    "alerts:channel-delete": [html(lambda w: f"/alerts/channels/{w.alert_channel.pk}/delete/", "member")],
    # telemetry: feedback labels (editors)
    "feedback": [
        api(
            "post",
            lambda w: f"/{V}/feedback/?project={w.project.slug}",
            "member",
            lambda w: [{"request_id": w.logged_request, "label": "a"}],
        ),
    ],
}

# Route names that change no project's state, and why (their methods are checked below).
NOT_PROJECT_STATE: dict[str, str] = {
    "healthz": "read-only probe",
    "readyz": "read-only probe",
    "login": "signing in (brute force: tests/core/test_login_lockout.py)",
    "logout": "signing out",
    "project-list": "any signed-in user creates a project of their own (tests/core/test_projects.py)",
    "token-list": "a user's own API tokens (tests/core/test_projects.py)",
    "token-detail": "a user's own API tokens",
    "notification-read": "a user's own notifications",
    "ingest-predictions": "model servers' deployment token, not a user (tests/telemetry/test_ingest.py)",
    "ingest-artifact": "model servers' deployment token, read-only",
    "core:project-list": "any signed-in user creates a project of their own",
    "core:token-list": "a user's own API tokens",
    "core:token-revoke": "a user's own API tokens",
    "registry:notifications-read": "a user's own notifications",
    "alerts:notices-read": "a user's own notices (marks them read)",
    "registry:request-withdraw": "only the requester may withdraw: see test_only_the_requester_withdraws",
    "promotion-request-withdraw": "only the requester may withdraw: see test_only_the_requester_withdraws",
}
# Route names with reads only: the test below checks that they refuse the writing methods (405).
READ_ONLY = {
    "api-schema", "api-docs", "api-redoc", "audit-list", "audit-detail", "dataset-version-detail",
    "dataset-version-download", "dataset-version-profile", "dataset-version-validation", "experiment-detail",
    "run-detail", "run-metrics", "pipeline-run-detail", "study-list", "study-detail", "model-version-detail",
    "model-version-download", "promotion-request-detail", "webhook-deliveries", "notification-list",
    "deployment-events", "deployment-manifests", "drift-report-detail", "deployment-performance",
    "datasets:dataset-list", "datasets:dataset-detail", "datasets:version-compare", "datasets:version-status",
    "datasets:version-download", "deployments:deployment-list", "deployments:deployment-detail",
    "deployments:deployment-live", "deployments:deployment-manifests", "experiments:experiment-detail",
    "experiments:run-detail", "experiments:run-log", "experiments:artifact-download", "experiments:run-compare",
    "experiments:pipeline-detail", "experiments:pipeline-live", "experiments:study-list",
    "experiments:study-detail", "monitoring:report-list", "monitoring:report-detail", "registry:model-list",
    "registry:model-detail", "registry:version-compare", "registry:version-detail", "registry:version-download",
    "registry:approval-inbox", "registry:request-detail", "registry:notification-list", "registry:webhook-detail",
    "core:home", "core:audit-log", "deployment-metrics", "deployment-performance-trend", "system-health", "metrics",
    "monitoring:dashboard-list", "monitoring:dashboard", "monitoring:dashboard-live", "monitoring:performance",
    "monitoring:health", "abtest-detail", "abtest-readouts", "abtests:abtest-list", "abtests:abtest-detail",
    "alert-rule-notifications", "alert-rule-actions", "alert-rule-preview", "alert-list", "alert-detail",
    "alert-transition-list", "alert-silence-detail", "alerts:rule-list", "alerts:rule-detail",
    "alerts:deployment-history", "alerts:silence-list", "alerts:channel-list", "alerts:channel-detail",
}  # fmt: skip


def _routes(patterns: list, prefix: str = "", namespace: str | None = None) -> dict[str, str]:
    routes: dict[str, str] = {}
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            if str(pattern.pattern) == "admin/":
                continue  # the admin is read-only for what serves (tests/deployments/test_hardening.py)
            routes.update(_routes(pattern.url_patterns, prefix + str(pattern.pattern), pattern.namespace or namespace))
        elif isinstance(pattern, URLPattern) and pattern.name:
            routes[f"{namespace}:{pattern.name}" if namespace else pattern.name] = prefix + str(pattern.pattern)
    return routes


def test_every_endpoint_has_a_matrix_entry() -> None:
    names = set(_routes(get_resolver().url_patterns))
    listed = set(MATRIX) | set(NOT_PROJECT_STATE) | READ_ONLY
    assert names - listed == set(), "endpoints without a role-matrix entry"
    assert listed - names == set(), "entries naming no endpoint"
    assert not set(MATRIX) & READ_ONLY and not set(NOT_PROJECT_STATE) & READ_ONLY


@pytest.fixture
def world(project: Any, owner: Any, member: Any, approver: Any, viewer: Any, outsider: Any) -> World:
    return World(project, {"owner": owner, "member": member, "approver": approver, "viewer": viewer})


def _client(user: Any, api_case: bool) -> Any:
    if api_case:
        client = APIClient()
        client.force_authenticate(user)
        return client
    client = Client()
    client.force_login(user)
    return client


def _send(case: Case, world: World, user: Any) -> Any:
    """The request in a savepoint that is rolled back: the next role meets the same state."""
    path = case.path(world)
    body = case.body(world)
    with transaction.atomic():
        audited = AuditEntry.objects.count()
        client = _client(user, case.api)
        if case.api:
            response = getattr(client, case.method)(path, body, format="multipart" if case.multipart else "json")
        else:
            response = getattr(client, case.method)(path, body)
        wrote = AuditEntry.objects.count() != audited
        transaction.set_rollback(True)
    return response, wrote


CASES = [pytest.param(name, index, id=f"{name}[{index}]") for name in MATRIX for index in range(len(MATRIX[name]))]


@pytest.mark.parametrize(("name", "index"), CASES)
def test_the_role_matrix(world: World, outsider: Any, name: str, index: int) -> None:
    case = MATRIX[name][index]
    # Make the objects first, outside the rolled-back requests.
    case.path(world), case.body(world)
    lowest = ProjectRole.rank(RANK[case.role])
    for role in ("outsider", *ROLES):
        user = outsider if role == "outsider" else world.users[role]
        response, wrote = _send(case, world, user)
        status = response.status_code
        where = f"{case.method.upper()} {case.path(world)} as {role}: {status}"
        allowed = role != "outsider" and ProjectRole.rank(RANK[role]) >= lowest
        if allowed:
            limit = 400 if case.passes == "success" else 500
            assert status < limit and status not in (401, 403, 404), where
        elif case.form:
            # The project is not among the form's choices (or, with no project to pick at all, a 403).
            assert status in (200, 400, 403) and not wrote, where
            assert status == 403 or "project" in response.context["form"].errors, where
        elif case.picked and role == "outsider":
            assert status == 400 and case.picked in response.json() and not wrote, where
        else:
            assert status == (404 if role == "outsider" else 403), where
            assert not wrote, where


def test_read_only_endpoints_refuse_writes(world: World) -> None:
    """The READ_ONLY routes really are: an owner's POST (API: and DELETE) is a 405."""
    routes = _routes(get_resolver().url_patterns)
    owner = world.users["owner"]
    for name in sorted(READ_ONLY):
        if name in ("api-schema", "api-docs", "api-redoc", "core:home"):
            continue  # not an object's page; no parameters to fill
        path = "/" + _fill(routes[name], world)
        for method in ("post", "delete") if path.startswith("/api/") else ("post",):
            status = getattr(_client(owner, path.startswith("/api/")), method)(path).status_code
            assert status == 405, f"{method.upper()} {path}: {status}"


def _fill(route: str, world: World) -> str:
    """A route pattern with its parameters filled by objects of the world (which exist or not: a 405 comes first)."""
    route = route.replace("^", "").replace("$", "")
    route = re.sub(r"\(\?P<[^>]+>[^)]*\)", "1", route)
    route = re.sub(r"<slug:slug>", world.project.slug, route)
    return re.sub(r"<(?:\w+:)?\w+>", "1", route)


def test_only_the_requester_withdraws(world: World, outsider: Any) -> None:
    request = world.promotion  # made by the editor
    for role, status in (("outsider", 404), ("viewer", 403), ("approver", 403), ("owner", 403), ("member", 200)):
        user = outsider if role == "outsider" else world.users[role]
        response, wrote = _send(
            api("post", lambda w: f"/{V}/promotion-requests/{request.pk}/withdraw/", "member"), world, user
        )
        assert response.status_code == status and wrote == (status == 200), role
        response, wrote = _send(html(lambda w: f"/approvals/{request.pk}/withdraw/", "member"), world, user)
        assert (response.status_code < 400) == (status == 200) and wrote == (status == 200), role
