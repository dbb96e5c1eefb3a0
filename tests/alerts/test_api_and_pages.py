"""The alerts API and pages as owner, editor, viewer and outsider; bad input is a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from apps.alerts import services
from apps.alerts.models import AlertRule, Silence
from tests.alerts.conftest import make_deployment, write_minutes
from tests.conftest import client_for
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db
RULES = "/api/v1/alert-rules/"


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def rule_payload(project: Any, deployment: Any, **extra: Any) -> dict[str, Any]:
    return {
        "project": project.slug,
        "deployment": deployment.pk,
        "name": "p99",
        "figure": "latency_p99",
        "comparator": "gt",
        "threshold": 500,
        "window_seconds": 300,
        "for_seconds": 60,
        **extra,
    }


@pytest.fixture
def rule(project: Any, owner: Any, deployment: Any, webhook_channel: Any) -> AlertRule:
    return services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        channels=[webhook_channel],
        name="errors",
        figure="error_rate",
        comparator="gt",
        threshold=0.01,
    )


def test_editors_create_rules_and_everyone_in_the_project_reads_them(
    project, member, viewer, outsider, deployment, webhook_channel
) -> None:
    answer = client_for(member).post(
        RULES, rule_payload(project, deployment, channels=[webhook_channel.pk], labels={"team": "ml"}), format="json"
    )
    assert answer.status_code == 201, answer.json()
    body = answer.json()
    assert body["condition"] == "Latency p99 (ms) > 500" and body["channels"] == [webhook_channel.pk]
    assert body["labels"] == {"team": "ml"} and body["repeat_interval_seconds"] == 4 * 3600 and body["send_resolved"]
    assert client_for(viewer).get(RULES).json()["count"] == 1
    assert client_for(viewer).post(RULES, rule_payload(project, deployment, name="x"), format="json").status_code == 403
    assert client_for(outsider).get(RULES).json()["count"] == 0
    assert client_for(outsider).get(f"{RULES}{body['id']}/").status_code == 404
    assert client_for(outsider).delete(f"{RULES}{body['id']}/").status_code == 404
    patched = client_for(member).patch(f"{RULES}{body['id']}/", {"threshold": 750}, format="json")
    assert patched.status_code == 200 and patched.json()["threshold"] == 750
    assert client_for(viewer).delete(f"{RULES}{body['id']}/").status_code == 403
    assert client_for(member).delete(f"{RULES}{body['id']}/").status_code == 204


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"threshold": "high"}, "threshold"),
        ({"threshold": "NaN"}, "threshold"),
        ({"figure": "cpu"}, "figure"),
        ({"for_seconds": 10}, "for_seconds"),
        ({"comparator": "=="}, "comparator"),
        ({"window_seconds": 5}, "window_seconds"),
        ({"severity": "page"}, "severity"),
        ({"runbook_url": "javascript:alert(1)"}, "runbook_url"),
        ({"labels": ["team"]}, "labels"),
        ({"figure": "column_drift", "column": ""}, "column"),
        ({"threshold_from_validation": True}, "threshold_from_validation"),
        ({"figure": "event_drops", "threshold_from_validation": True}, "threshold_from_validation"),
        ({"retrain_abtest_percent": 100}, "retrain_abtest_percent"),
        ({"retrain_abtest_percent": 12.5}, "retrain_abtest_percent"),
        ({"deployment": None}, "deployment"),
        ({"bogus": 1}, None),
    ],
)
def test_bad_rules_are_a_400_naming_the_field(project, member, deployment, change, field) -> None:
    answer = client_for(member).post(RULES, {**rule_payload(project, deployment), **change}, format="json")
    assert answer.status_code == 400, answer.json()
    if field is not None:
        assert field in answer.json(), answer.json()
    assert not AlertRule.objects.exists()


def test_objects_of_other_projects_are_absent(project, member, owner, deployment) -> None:
    other = ProjectFactory()
    from tests.conftest import _member

    stranger_owner = _member(other, "owner", "stranger")
    foreign = make_deployment(other, stranger_owner, "foreign")
    answer = client_for(member).post(RULES, rule_payload(project, foreign), format="json")
    assert answer.status_code == 404 and "deployment" in answer.json()
    answer = client_for(member).post(RULES, {**rule_payload(project, deployment), "project": other.slug}, format="json")
    assert answer.status_code == 400 and "project" in answer.json()


def test_unknown_or_malformed_filters_are_a_400(rule, viewer) -> None:
    client = client_for(viewer)
    assert client.get(RULES, {"figure": "error_rate"}).json()["count"] == 1
    assert client.get(RULES, {"figure": "cpu"}).status_code == 400
    assert "colour" in client.get(RULES, {"colour": "red"}).json()
    assert client.get("/api/v1/alert-transitions/", {"rule": "x"}).status_code == 400


def test_history_per_rule_and_per_deployment_and_alert_states(rule, viewer, deployment) -> None:
    write_minutes(deployment, minutes=5, errors=3)
    services.alert_rules_evaluate_due()
    client = client_for(viewer)
    [alert] = client.get("/api/v1/alerts/", {"rule": rule.pk}).json()["results"]
    assert alert["state"] == "firing" and alert["value"] == pytest.approx(0.03)
    [transition] = client.get("/api/v1/alert-transitions/", {"deployment": deployment.pk}).json()["results"]
    assert (transition["from_state"], transition["to_state"], transition["rule"]) == ("inactive", "firing", rule.pk)
    notifications = client.get(f"{RULES}{rule.pk}/notifications/").json()
    assert [n["kind"] for n in notifications] == ["firing"] and notifications[0]["deliveries"][0][
        "channel"
    ] == "webhook"
    preview = client.get(f"{RULES}{rule.pk}/preview/").json()
    assert len(preview["points"]) == 49 and preview["points"][-1]["value"] == pytest.approx(0.03)


def test_the_defaults_in_one_call(project, member, viewer, deployment) -> None:
    answer = client_for(member).post(f"{RULES}defaults/", {"deployment": deployment.pk}, format="json")
    assert answer.status_code == 201 and len(answer.json()) == 4
    assert client_for(member).post(f"{RULES}defaults/", {"deployment": deployment.pk}, format="json").json() == []
    assert client_for(viewer).post(f"{RULES}defaults/", {"deployment": deployment.pk}, format="json").status_code == 403


def test_channels_secrets_masked_private_urls_refused_and_a_test_notification(
    settings, project, member, viewer, outsider, hook_server, django_capture_on_commit_callbacks
) -> None:
    client = client_for(member)
    slack = client.post(
        "/api/v1/alert-channels/",
        {"project": project.slug, "name": "slack", "kind": "slack", "url": hook_server.url("/services/T1/B1/abcdefgh")},
        format="json",
    )
    assert slack.status_code == 201 and "abcdefgh" not in json.dumps(slack.json())
    assert "abcdefgh" not in json.dumps(client_for(viewer).get("/api/v1/alert-channels/").json())
    with django_capture_on_commit_callbacks(execute=True):
        tested = client.post(f"/api/v1/alert-channels/{slack.json()['id']}/test/")
    assert tested.status_code == 202 and tested.json()["kind"] == "test"
    assert json.loads(hook_server.received[-1].body)["text"].startswith("[TEST] Alert channel slack")
    assert client_for(viewer).post(f"/api/v1/alert-channels/{slack.json()['id']}/test/").status_code == 403
    assert client_for(outsider).post(f"/api/v1/alert-channels/{slack.json()['id']}/test/").status_code == 404
    settings.WEBHOOK_ALLOW_PRIVATE = False
    private = client.post(
        "/api/v1/alert-channels/",
        {"project": project.slug, "name": "hook", "kind": "webhook", "url": "http://192.168.1.4/x", "secret": "s" * 20},
        format="json",
    )
    assert private.status_code == 400 and "url" in private.json()
    bad_mail = client.post(
        "/api/v1/alert-channels/",
        {"project": project.slug, "name": "mail", "kind": "email", "addresses": ["not-an-address"]},
        format="json",
    )
    assert bad_mail.status_code == 400 and "addresses" in bad_mail.json()


def test_silences_through_the_api(project, member, viewer, rule) -> None:
    client = client_for(member)
    answer = client.post(
        "/api/v1/alert-silences/",
        {"project": project.slug, "rule": rule.pk, "hours": 2, "comment": "deploy"},
        format="json",
    )
    assert answer.status_code == 201 and answer.json()["active"] and answer.json()["author"] == "member"
    assert (
        client.post(
            "/api/v1/alert-silences/", {"project": project.slug, "comment": "x", "hours": 1}, format="json"
        ).status_code
        == 400
    )
    assert (
        client.post(
            "/api/v1/alert-silences/", {"project": project.slug, "rule": rule.pk, "comment": ""}, format="json"
        ).status_code
        == 400
    )
    assert client_for(viewer).post(f"/api/v1/alert-silences/{answer.json()['id']}/expire/").status_code == 403
    expired = client.post(f"/api/v1/alert-silences/{answer.json()['id']}/expire/")
    assert expired.status_code == 200 and not Silence.objects.get().is_active


def test_pages_for_viewers_editors_and_outsiders(
    project, owner, member, viewer, outsider, rule, deployment, webhook_channel
) -> None:
    write_minutes(deployment, minutes=5, errors=3)
    services.alert_rules_evaluate_due()
    pages = [
        "/alerts/",
        f"/alerts/rules/{rule.pk}/",
        f"/alerts/deployments/{deployment.pk}/",
        "/alerts/silences/",
        "/alerts/channels/",
        f"/alerts/channels/{webhook_channel.pk}/",
    ]
    for url in pages:
        assert browser(viewer).get(url).status_code == 200, url
    detail = browser(viewer).get(f"/alerts/rules/{rule.pk}/").content.decode()
    assert 'data-testid="rule-preview"' in detail and "Firing" in detail and "Edit" not in detail
    deployment_page = browser(member).get(deployment.get_absolute_url()).content.decode()
    assert 'data-testid="deployment-alerts-card"' in deployment_page and "deployment-alert-defaults" in deployment_page
    assert "deployment-alert-defaults" not in browser(viewer).get(deployment.get_absolute_url()).content.decode()
    assert browser(outsider).get(f"/alerts/rules/{rule.pk}/").status_code == 404
    assert browser(outsider).get(f"/alerts/deployments/{deployment.pk}/").status_code == 404
    assert browser(viewer).get("/alerts/?colour=red").status_code == 400
    editor = browser(member)
    assert editor.get(f"/alerts/rules/{rule.pk}/edit/").status_code == 200
    form = editor.get(f"/alerts/projects/{project.slug}/rules/new/?deployment={deployment.pk}")
    assert form.status_code == 200 and 'data-testid="rule-preview"' not in form.content.decode()
    previewed = editor.get(
        f"/alerts/projects/{project.slug}/rules/new/",
        {
            "preview": "1",
            "deployment": deployment.pk,
            "figure": "error_rate",
            "threshold": "0.02",
            "window_seconds": 300,
        },
    )
    assert 'data-testid="rule-preview"' in previewed.content.decode() and not AlertRule.objects.filter(name="").exists()
    refused = editor.post(
        f"/alerts/projects/{project.slug}/rules/new/",
        {
            "name": "lat",
            "deployment": deployment.pk,
            "figure": "latency_p99",
            "comparator": "gt",
            "threshold": "fast",
            "window_seconds": 300,
            "for_seconds": 0,
            "keep_firing_for_seconds": 0,
            "repeat_interval_seconds": 14400,
            "severity": "warning",
            "labels": "{}",
            "retrain_cooldown_seconds": 86400,
        },
    )
    assert refused.status_code == 200 and "is not a number" in refused.content.decode()
    created = editor.post(
        f"/alerts/projects/{project.slug}/rules/new/",
        {
            "name": "lat",
            "deployment": deployment.pk,
            "figure": "latency_p99",
            "comparator": "gt",
            "threshold": "500",
            "window_seconds": 300,
            "for_seconds": 0,
            "keep_firing_for_seconds": 0,
            "repeat_interval_seconds": 14400,
            "severity": "warning",
            "labels": "{}",
            "retrain_cooldown_seconds": 86400,
            "send_resolved": "on",
            "enabled": "on",
        },
    )
    assert created.status_code == 302 and AlertRule.objects.filter(name="lat", send_resolved=True).exists()
    assert browser(viewer).post(f"/alerts/deployments/{deployment.pk}/defaults/").status_code == 403
    assert editor.post(f"/alerts/deployments/{deployment.pk}/defaults/").status_code == 302
    assert AlertRule.objects.filter(deployment=deployment).count() == 6
    silenced = editor.post(
        "/alerts/silences/new/", {"rule": rule.pk, "comment": "deploying", "hours": 1, "matchers": "{}"}
    )
    assert silenced.status_code == 302 and Silence.objects.get().rule == rule
    assert editor.post(f"/alerts/channels/{webhook_channel.pk}/test/").status_code == 302
    assert 'data-testid="channel-tests"' in editor.get(f"/alerts/channels/{webhook_channel.pk}/").content.decode()


def test_the_admin_is_read_only(rule, owner) -> None:
    owner.is_staff = owner.is_superuser = True
    owner.save()
    client = browser(owner)
    assert client.get("/admin/alerts/alertrule/").status_code == 200
    assert client.get(f"/admin/alerts/alertrule/{rule.pk}/change/").status_code == 200
    assert client.get("/admin/alerts/alertrule/add/").status_code == 403
