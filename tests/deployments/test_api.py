"""The deployments API and services without model servers: roles, bad input, gates, optimistic concurrency,
rollouts' desired state, rollback, the ingest token. (Ingest itself is in tests/telemetry; reconciling with real
processes is in tests/e2e.)"""

from __future__ import annotations

import io
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from apps.core.artifacts import get_artifact_store
from apps.deployments import hooks, selectors, services
from apps.deployments.choices import DeploymentEventKind, RolloutPhase
from apps.deployments.models import Deployment
from apps.deployments.services import reconcile
from apps.experiments.stages import StageContext
from apps.registry.choices import PromotionRequestStatus
from apps.registry.models import PromotionRequest
from apps.telemetry.services import IngestSource, predictions_ingest
from tests.conftest import client_for
from tests.factories import ModelVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(project: Any) -> list[Any]:
    model = RegisteredModelFactory(project=project, name="iris")
    return [ModelVersionFactory(model=model, number=n) for n in (1, 2, 3)]


@pytest.fixture
def deployment(project: Any, owner: Any, versions: list) -> Deployment:
    return services.deployment_create(project=project, name="iris", actor=owner, model_version=versions[0])


def create(user: Any, project: Any, **body: Any) -> Any:
    return client_for(user).post(
        "/api/v1/deployments/", {"project": project.slug, "name": "iris", **body}, format="json"
    )


def test_create_by_role(project: Any, versions: list, member: Any, viewer: Any, outsider: Any) -> None:
    assert create(viewer, project, model_version=versions[0].pk).status_code == 403
    assert create(outsider, project, model_version=versions[0].pk).status_code == 400, "the project looks absent"
    response = create(member, project, model_version=versions[0].pk)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["traffic"] == [
        {"model_version": versions[0].pk, "version": 1, "label": "", "weight": 100, "shadow": False}
    ]
    assert body["backend"] == "local" and body["generation"] == 1 and response["ETag"] == '"1"'
    deployment = Deployment.objects.get(name="iris")
    assert deployment.events.filter(kind=DeploymentEventKind.CREATED).exists()
    assert deployment.ingest_token_hash == Deployment.hash_token(deployment.ingest_token())
    assert deployment.ingest_token() not in str(Deployment.objects.filter(pk=deployment.pk).values().get())


def test_url_is_the_balanced_endpoint_once_a_replica_is_ready(deployment: Deployment, viewer: Any) -> None:
    def url_with(observed: dict) -> Any:
        Deployment.objects.filter(pk=deployment.pk).update(observed=observed)
        return client_for(viewer).get(f"/api/v1/deployments/{deployment.pk}/").json()["url"]

    replicas = [
        {"replica": "d-0", "url": "http://127.0.0.1:5001", "health": "starting"},
        {"replica": "d-1", "url": "http://127.0.0.1:5002", "health": "ready"},
    ]
    assert url_with({}) is None
    assert url_with({"endpoint": "http://127.0.0.1:5000", "replicas": replicas[:1]}) is None, "nothing ready"
    assert url_with({"endpoint": "http://127.0.0.1:5000", "replicas": replicas}) == "http://127.0.0.1:5000"
    assert url_with({"endpoint": "", "replicas": replicas}) == "http://127.0.0.1:5002", "no endpoint: a ready one"


def test_reading_by_role(deployment: Deployment, viewer: Any, outsider: Any) -> None:
    assert client_for(viewer).get(f"/api/v1/deployments/{deployment.pk}/").status_code == 200
    assert client_for(outsider).get(f"/api/v1/deployments/{deployment.pk}/").status_code == 404
    assert client_for(outsider).get("/api/v1/deployments/").json()["results"] == []
    assert (
        client_for(viewer)
        .post(f"/api/v1/deployments/{deployment.pk}/scale/", {"generation": 1, "replicas": 2})
        .status_code
        == 403
    )
    assert (
        client_for(outsider)
        .post(f"/api/v1/deployments/{deployment.pk}/scale/", {"generation": 1, "replicas": 2})
        .status_code
        == 404
    )


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"model_version": 999_999}, "model_version", "does not exist"),
        (
            {"traffic": [{"model_version": "V1", "weight": 60}, {"model_version": "V2", "weight": 30}]},
            "traffic",
            "sum to 100",
        ),
        ({"model_version": "V1", "replicas": 11}, "replicas", "between 1 and 10"),
        ({"model_version": "V1", "replicas": 0}, "replicas", "between 1 and 10"),
        ({"model_version": "V1", "autoscale_min": 3, "autoscale_max": 2}, "autoscale_max", "at least autoscale_min"),
        ({"model_version": "V1", "name": "Not A Name"}, "name", "lower-case letters"),
    ],
)
def test_bad_input_names_the_field(
    project: Any, versions: list, member: Any, body: dict, field: str, message: str
) -> None:
    ids = {"V1": versions[0].pk, "V2": versions[1].pk}
    body = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    if "traffic" in body:
        body["traffic"] = [{**t, "model_version": ids[t["model_version"]]} for t in body["traffic"]]
    response = create(member, project, **body)
    assert response.status_code == 400, response.json()
    assert message in str(response.json()[field]), response.json()
    assert not Deployment.objects.exists(), "a refused request writes nothing"


def test_kubernetes_allows_more_replicas(project: Any, versions: list, member: Any) -> None:
    response = create(member, project, model_version=versions[0].pk, backend="kubernetes", replicas=50)
    assert response.status_code == 201 and response.json()["replicas"] == 50


def production_request(version: Any, user: Any, status: str) -> PromotionRequest:
    return PromotionRequest.objects.create(
        model=version.model,
        version=version,
        target_stage="production",
        transition="stage:production",
        status=status,
        requested_by=user,
        expires_at=timezone.now(),
    )


def test_production_needs_an_approved_version(project: Any, versions: list, member: Any, owner: Any) -> None:
    response = create(member, project, model_version=versions[0].pk, environment="production")
    assert response.status_code == 403
    message = str(response.json()["model_version"])
    assert "is in no stage" in message and "Request a promotion to production in the registry." in message
    production_request(versions[0], member, PromotionRequestStatus.APPROVED)
    assert create(member, project, model_version=versions[0].pk, environment="production").status_code == 201
    deployment = Deployment.objects.get(name="iris")
    production_request(versions[1], member, PromotionRequestStatus.OPEN)
    refused = client_for(member).post(
        f"/api/v1/deployments/{deployment.pk}/rollout/",
        {"generation": deployment.generation, "model_version": versions[1].pk, "strategy": "canary"},
        format="json",
    )
    assert refused.status_code == 403 and "awaits an approver" in str(refused.json()["model_version"])


def test_concurrent_changes_one_wins(deployment: Deployment, member: Any) -> None:
    url = f"/api/v1/deployments/{deployment.pk}/scale/"
    first = client_for(member).post(url, {"generation": 1, "replicas": 2}, format="json")
    second = client_for(member).post(url, {"generation": 1, "replicas": 3}, format="json")
    assert first.status_code == 200 and first.json()["generation"] == 2
    assert second.status_code == 409 and "generation 2" in second.json()["detail"]
    assert client_for(member).post(url, {"replicas": 3}, format="json").json() == {
        "generation": ["Send the generation you read (a `generation` field or an If-Match header)."]
    }
    by_header = client_for(member).post(url, {"replicas": 3}, format="json", HTTP_IF_MATCH='"2"')
    assert by_header.status_code == 200 and by_header.json()["replicas"] == 3
    deployment.refresh_from_db()
    assert deployment.replicas == 3 and deployment.events.filter(kind=DeploymentEventKind.SCALED).count() == 2


def test_scale_validates_and_autoscale_bounds(deployment: Deployment, member: Any) -> None:
    url = f"/api/v1/deployments/{deployment.pk}/scale/"
    assert "replicas" in client_for(member).post(url, {"generation": 1, "replicas": 11}, format="json").json()
    response = client_for(member).post(
        url, {"generation": 1, "autoscale": True, "autoscale_min": 2, "autoscale_max": 5}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["autoscale_min"], response.json()["autoscale_max"], response.json()["replicas"]) == (
        2,
        5,
        2,
    )


def test_autoscale_without_bounds_is_a_400(deployment: Deployment, member: Any) -> None:
    url = f"/api/v1/deployments/{deployment.pk}/scale/"
    response = client_for(member).post(url, {"generation": 1, "autoscale": True}, format="json")
    assert response.status_code == 400 and "autoscale_min" in response.json()
    deployment.refresh_from_db()
    assert deployment.generation == 1 and deployment.autoscale_min is None


@pytest.mark.parametrize(
    ("analysis", "field"),
    [
        ({"max_p99_ratio": "abc"}, "max_p99_ratio"),
        ({"max_p99_ratio": 0.5}, "max_p99_ratio"),
        ({"min_requests": -5}, "min_requests"),
        ({"failures_to_rollback": 0}, "failures_to_rollback"),
        ({"max_error_rate_delta": 2}, "max_error_rate_delta"),
        ({"window_seconds": 0}, "window_seconds"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_canary_analysis_is_a_400_naming_the_setting(
    deployment: Deployment, member: Any, versions: list, analysis: dict, field: str
) -> None:
    body = {"generation": 1, "model_version": versions[1].pk, "strategy": "canary", "analysis": analysis}
    response = client_for(member).post(f"/api/v1/deployments/{deployment.pk}/rollout/", body, format="json")
    assert response.status_code == 400 and field in response.json()["analysis"], response.json()
    deployment.refresh_from_db()
    assert deployment.generation == 1 and deployment.phase != RolloutPhase.ANALYSING


@pytest.mark.parametrize(
    ("analysis", "message"),
    [
        ({"max_p99_ratio": "abc"}, "max_p99_ratio must be a number"),
        ({"min_requests": -5}, "min_requests"),
        ({"window_seconds": "soon"}, "window_seconds must be an integer"),
        ({"bogus": 1}, "Unknown analysis setting(s): bogus"),
    ],
)
def test_the_rollout_service_refuses_bad_analysis_too(
    deployment: Deployment, member: Any, versions: list, analysis: dict, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        services.deployment_rollout(
            deployment=deployment, model_version=versions[1], strategy="canary", actor=member, analysis=analysis
        )
    assert message in str(caught.value.message_dict["analysis"])


def test_canary_rollout_promote_and_rollback(deployment: Deployment, member: Any, versions: list) -> None:
    base = f"/api/v1/deployments/{deployment.pk}"
    started = client_for(member).post(
        f"{base}/rollout/",
        {"generation": 1, "model_version": versions[1].pk, "strategy": "canary", "traffic_percentage": 10},
        format="json",
    )
    assert started.status_code == 200, started.json()
    body = started.json()
    assert [(t["version"], t["weight"]) for t in body["traffic"]] == [(1, 90), (2, 10)]
    assert body["phase"] == RolloutPhase.ANALYSING and body["strategy_state"]["steps"] == [10, 25, 50, 100]
    busy = client_for(member).post(
        f"{base}/rollout/", {"generation": 2, "model_version": versions[2].pk, "strategy": "direct"}, format="json"
    )
    assert busy.status_code == 409 and "in progress" in busy.json()["detail"]
    promoted = client_for(member).post(f"{base}/promote/", {"generation": 2}, format="json").json()
    assert [(t["version"], t["weight"]) for t in promoted["traffic"]] == [(1, 75), (2, 25)]
    rolled = client_for(member).post(f"{base}/rollback/", {"generation": 3, "reason": "latency"}, format="json").json()
    assert [(t["version"], t["weight"]) for t in rolled["traffic"]] == [(1, 100)]
    assert rolled["phase"] == RolloutPhase.ROLLED_BACK
    again = client_for(member).post(f"{base}/rollback/", {"generation": 4}, format="json")
    assert again.status_code == 409 and "no earlier healthy state" in again.json()["detail"]
    events = client_for(member).get(f"{base}/events/").json()["results"]
    assert events[0]["kind"] == "rolled_back" and "latency" in events[0]["message"]


def test_a_stopped_deployment_takes_no_change_until_started(
    deployment: Deployment, member: Any, versions: list
) -> None:
    base = f"/api/v1/deployments/{deployment.pk}"
    client = client_for(member)
    assert client.delete(f"{base}/").status_code == 204
    deployment.refresh_from_db()
    stopped_at = deployment.generation
    assert client.delete(f"{base}/").status_code == 204, "stopping twice is harmless"
    deployment.refresh_from_db()
    assert deployment.generation == stopped_at and deployment.events.filter(kind="stopped").count() == 1
    changes = {
        "scale": {"replicas": 3},
        "promote": {},
        "rollback": {},
        "traffic": {"traffic": [{"model_version": versions[1].pk, "weight": 100}]},
        "rollout": {"model_version": versions[1].pk, "strategy": "direct"},
    }
    for action, body in changes.items():
        response = client.post(f"{base}/{action}/", {"generation": stopped_at, **body}, format="json")
        assert response.status_code == 409 and "is stopped" in response.json()["detail"], action
    deployment.refresh_from_db()
    assert deployment.generation == stopped_at and deployment.replicas == 1
    started = client.post(f"{base}/start/", {"generation": stopped_at}, format="json")
    assert started.status_code == 200 and started.json()["status"] == "progressing"
    assert client.post(f"{base}/start/", {"generation": stopped_at + 1}, format="json").status_code == 409
    scaled = client.post(f"{base}/scale/", {"generation": stopped_at + 1, "replicas": 3}, format="json")
    assert scaled.status_code == 200


def test_a_canary_waiting_for_data_pauses_once_and_a_promote_clears_the_pause(
    deployment: Deployment, member: Any, versions: list
) -> None:
    services.deployment_rollout(deployment=deployment, model_version=versions[1], strategy="canary", actor=member)
    deployment.refresh_from_db()
    window = deployment.strategy_state["window_seconds"]
    state = {
        **deployment.strategy_state,
        "window_started_at": (timezone.now() - timedelta(seconds=window + 1)).isoformat(),
    }
    Deployment.objects.filter(pk=deployment.pk).update(strategy_state=state)
    for _ in range(3):  # three reconciles with no prediction at all
        deployment.refresh_from_db()
        assert reconcile._canary_analyse(deployment, dict(deployment.strategy_state)) is False
    deployment.refresh_from_db()
    assert deployment.status == "paused" and "not enough data" in deployment.status_message
    assert deployment.events.filter(kind=DeploymentEventKind.CANARY_DECISION).count() == 1
    [decision] = deployment.strategy_state["decisions"]
    assert decision["action"] == "pause" and decision["paused_since"] < decision["at"]
    services.deployment_promote(deployment=deployment, actor=member)
    deployment.refresh_from_db()
    assert (deployment.status, deployment.status_message) == ("progressing", "")
    assert deployment.strategy_state["step"] == 1


def test_blue_green_and_shadow_desired_states(deployment: Deployment, member: Any, versions: list) -> None:
    services.deployment_rollout(deployment=deployment, model_version=versions[1], strategy="blue_green", actor=member)
    live, _ = selectors.deployment_targets(deployment)
    assert [(t.model_version.number, t.weight) for t in live] == [(1, 100), (2, 0)], "green loads beside blue"
    services.deployment_promote(deployment=deployment, actor=member)
    services.deployment_rollout(deployment=deployment, model_version=versions[2], strategy="shadow", actor=member)
    live, shadow = selectors.deployment_targets(deployment)
    assert [(t.model_version.number, t.weight) for t in live] == [(2, 100)] and shadow.model_version.number == 3
    services.deployment_promote(deployment=deployment, actor=member)
    live, shadow = selectors.deployment_targets(deployment)
    assert [(t.model_version.number, t.weight) for t in live] == [(3, 100)] and shadow is None


def test_a_reapplied_spec_keeps_every_artifact_path_including_the_shadows(
    deployment: Deployment, member: Any, versions: list
) -> None:
    store = get_artifact_store()
    for n, version in enumerate(versions):
        version.sha256 = store.put_bytes(f"bundle {n}".encode()).sha256
        version.save(update_fields=["sha256"])
    services.deployment_rollout(deployment=deployment, model_version=versions[1], strategy="shadow", actor=member)
    deployment.refresh_from_db()
    applied = services.deployment_spec(deployment)
    deployment.applied_spec = applied.to_dict()
    # Later reconciles of the same generation skip the hash check and reuse the applied paths.
    again = services.deployment_spec(deployment, verify=False)
    assert again.shadow is not None and again.shadow.artifact_path == applied.shadow.artifact_path
    assert Path(again.shadow.artifact_path).is_file()
    assert [v.artifact_path for v in again.versions] == [v.artifact_path for v in applied.versions]


def test_set_traffic_requires_weights_summing_to_100(deployment: Deployment, member: Any, versions: list) -> None:
    url = f"/api/v1/deployments/{deployment.pk}/traffic/"
    bad = [{"model_version": versions[0].pk, "weight": 50}, {"model_version": versions[1].pk, "weight": 40}]
    response = client_for(member).post(url, {"generation": 1, "traffic": bad}, format="json")
    assert response.status_code == 400 and "sum to 100" in response.json()["traffic"][0]
    other = ModelVersionFactory()  # a version of another model
    unknown = [{"model_version": other.pk, "weight": 100}]
    assert "traffic" in client_for(member).post(url, {"generation": 1, "traffic": unknown}, format="json").json()


def test_manifests_are_yaml_without_the_token(deployment: Deployment, viewer: Any) -> None:
    response = client_for(viewer).get(f"/api/v1/deployments/{deployment.pk}/manifests/")
    assert response.status_code == 200 and response["Content-Type"] == "application/yaml"
    documents = list(yaml.safe_load_all(response.content))
    assert [d["kind"] for d in documents] == [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ]
    assert deployment.ingest_token() not in response.content.decode()
    assert "&id" not in response.content.decode() and "*id" not in response.content.decode(), "no YAML aliases"
    out = io.StringIO()
    call_command("export_manifests", deployment_id=deployment.pk, stdout=out)
    assert out.getvalue() == response.content.decode()


def test_a_claimed_deployment_is_left_to_its_reconciler(deployment: Deployment) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(
        reconcile_lease_until=timezone.now() + timezone.timedelta(minutes=5)
    )
    assert services.deployment_reconcile(deployment_id=deployment.pk) == "busy"


def test_approval_hook_rolls_out_on_following_deployments(deployment: Deployment, versions: list) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(auto_deploy_on_approval=True, strategy="canary")
    assert hooks.deployment_rollout_approved(deployment_id=deployment.pk, model_version_id=versions[1].pk) == "started"
    deployment.refresh_from_db()
    assert deployment.phase == RolloutPhase.ANALYSING
    assert hooks.deployment_rollout_approved(deployment_id=deployment.pk, model_version_id=versions[2].pk) == "busy"
    assert (
        hooks.deployment_rollout_approved(deployment_id=deployment.pk, model_version_id=versions[0].pk)
        == "already serving"
    )


class _StageLog:
    """The part of a stage's runtime that the deploy stage uses: its log."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_deploy_stage_creates_then_rolls_out(project: Any, owner: Any, versions: list) -> None:
    runtime = _StageLog()

    def context(config: dict, version: Any) -> StageContext:
        # The deploy stage reads only the config, the register stage's outputs, the actor and the log.
        outputs = {"register": {"model_version_id": version.pk}}
        return StageContext(stage=None, runtime=runtime, config=config, outputs=outputs, actor=owner)

    assert hooks.deploy_stage(context({"name": "iris-pipe"}, versions[0]))["deployment"] == "iris-pipe"
    canary = {"name": "iris-pipe", "strategy": "canary", "traffic_percentage": 20}
    outputs = hooks.deploy_stage(context(canary, versions[1]))
    assert outputs["strategy"] == "canary" and outputs["phase"] == RolloutPhase.ANALYSING
    assert runtime.lines[0].startswith("created deployment iris-pipe") and "canary rollout" in runtime.lines[1]
    with pytest.raises(ValueError, match="unknown keys"):
        hooks.deploy_stage(context({"bogus": 1}, versions[1]))


def test_deploy_command(project: Any, versions: list) -> None:
    project.slug = "demo"
    project.save()
    out = io.StringIO()
    call_command("deploy", "--model-version", "iris:1", "--project", "demo", stdout=out)
    deployment = Deployment.objects.get(name="iris")
    call_command(
        "deploy", "--model-version", "iris:2", "--strategy", "canary", "--traffic-percentage", "20", stdout=out
    )
    deployment.refresh_from_db()
    assert deployment.strategy_state["steps"][0] == 20
    call_command("rollback", "--deployment-id", str(deployment.pk), stdout=out)
    call_command("scale", "--deployment-id", str(deployment.pk), "--replicas", "3", stdout=out)
    deployment.refresh_from_db()
    assert deployment.replicas == 3 and deployment.phase == RolloutPhase.ROLLED_BACK


def test_deploy_command_rolls_out_on_the_models_deployment_and_changes_nothing_when_refused(
    project: Any, versions: list, owner: Any
) -> None:
    project.slug = "demo"
    project.save()
    out = io.StringIO()
    with pytest.raises(CommandError, match="no running deployment"):
        call_command("deploy", "--model-version", "iris:1", "--strategy", "canary", stdout=out)
    assert not Deployment.objects.exists()
    deployment = services.deployment_create(
        project=project, name="iris-prod", actor=owner, model_version=versions[0], replicas=2
    )
    # v1 already serves: refused, and the --replicas given alongside is not applied either.
    with pytest.raises(CommandError, match="already takes 100%"):
        call_command("deploy", "--model-version", "iris:1", "--replicas", "3", stdout=out)
    deployment.refresh_from_db()
    assert (deployment.replicas, deployment.generation) == (2, 1)
    # Found through its model although its name differs; the replicas stay as they are.
    canary = ["--strategy", "canary", "--traffic-percentage", "10"]
    call_command("deploy", "--model-version", "iris:2", *canary, stdout=out)
    deployment.refresh_from_db()
    assert deployment.replicas == 2 and deployment.phase == RolloutPhase.ANALYSING
    assert "canary rollout of" in out.getvalue() and "iris-prod" in out.getvalue()
    services.deployment_create(project=project, name="iris-shadow", actor=owner, model_version=versions[0])
    with pytest.raises(CommandError, match="several deployments"):
        call_command("deploy", "--model-version", "iris:3", stdout=out)


def test_a_missing_artifact_fails_the_deployment_and_a_rotated_key_moves_the_token(
    deployment: Deployment, settings: Any, api: Any
) -> None:
    old = deployment.ingest_token()
    settings.SECRET_KEY = "a-rotated-secret-key"
    assert services.deployment_reconcile(deployment_id=deployment.pk) == "failed"
    deployment.refresh_from_db()
    assert deployment.status == "failed" and "cannot build the spec" in deployment.status_message
    assert deployment.events.filter(kind=DeploymentEventKind.ERROR).exists()
    new = deployment.ingest_token()
    assert new != old
    url = "/api/v1/ingest/predictions/"
    assert api.post(url, {"events": []}, format="json", HTTP_AUTHORIZATION=f"Bearer {new}").status_code == 202
    assert api.post(url, {"events": []}, format="json", HTTP_AUTHORIZATION=f"Bearer {old}").status_code == 401


def test_the_local_autoscaler_follows_the_request_rate(deployment: Deployment, member: Any, settings: Any) -> None:
    settings.DEPLOYMENTS_AUTOSCALE_TARGET_RPS = 1
    services.deployment_scale(deployment=deployment, actor=member, autoscale=True, autoscale_min=1, autoscale_max=3)
    if timezone.now().second >= 55:
        time.sleep(6)  # the rate is read over the last whole minute: keep this test inside one minute
    last_minute = (timezone.now() - timedelta(minutes=1)).isoformat()
    events = [
        {"deployment_id": deployment.pk, "request_id": f"r{i}", "status": 200, "timestamp": last_minute}
        for i in range(150)
    ]
    source = IngestSource(deployment_id=deployment.pk, project_id=deployment.project_id)
    predictions_ingest(source=source, events=events)
    services.deployment_reconcile(deployment_id=deployment.pk)
    deployment.refresh_from_db()
    assert deployment.replicas == 3, "150 requests in a minute at 1 request/s per replica, capped at 3"
    autoscaled = deployment.events.get(kind=DeploymentEventKind.AUTOSCALED)
    assert autoscaled.data["request_rate"] == 2.5 and autoscaled.data["replicas"] == 3
    services.deployment_reconcile(deployment_id=deployment.pk)
    assert deployment.events.filter(kind=DeploymentEventKind.AUTOSCALED).count() == 1, "no change without cause"


def test_an_unreachable_backend_is_the_deployment_status(
    project: Any, owner: Any, versions: list, settings: Any
) -> None:
    settings.DEPLOYMENTS_DOCKER_URL = "unix:///nonexistent/docker.sock"
    deployment = services.deployment_create(
        project=project, name="dockered", actor=owner, model_version=versions[0], backend="docker"
    )
    assert services.deployment_reconcile(deployment_id=deployment.pk) == "failed"
    deployment.refresh_from_db()
    assert deployment.status == "failed" and "backend unavailable" in deployment.status_message


def test_an_unreachable_docker_engine_is_named_in_the_status(deployment: Deployment, settings: Any, tmp_path) -> None:
    settings.DEPLOYMENTS_DOCKER_URL = f"unix://{tmp_path}/no-docker.sock"
    Deployment.objects.filter(pk=deployment.pk).update(backend="docker")
    assert services.deployment_reconcile(deployment_id=deployment.pk) == "failed"
    deployment.refresh_from_db()
    assert deployment.status == "failed"
    assert f"the Docker engine cannot be reached at unix://{tmp_path}/no-docker.sock" in deployment.status_message
