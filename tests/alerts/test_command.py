"""`manage.py alerts list` and `manage.py alerts silence`."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.alerts import services
from apps.alerts.models import Silence
from tests.alerts.conftest import write_minutes

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("alerts", *args, stdout=out)
    return out.getvalue()


def test_list_and_silence(project, owner, member, viewer, deployment) -> None:
    rule = services.alert_rule_create(
        project=project,
        actor=owner,
        deployment=deployment,
        name="errors",
        figure="error_rate",
        comparator="gt",
        threshold=0.01,
        labels={"team": "ml"},
    )
    write_minutes(deployment, minutes=5, errors=2)
    services.alert_rules_evaluate_due()
    listed = run("list", "--project", project.slug)
    assert f"#{rule.pk} {project.slug}/errors: Error rate (5xx share) > 0.01 [warning]" in listed
    assert "iris: firing value=0.02" in listed
    assert run("list", "--state", "resolved") == ""
    said = run("silence", "--project", project.slug, "--match", "team=ml", "--hours", "1", "--comment", "deploy")
    silence = Silence.objects.get()
    assert said.startswith(f"Silence #{silence.pk} until") and silence.matchers == {"team": "ml"}
    assert silence.created_by is None
    run("silence", "--project", project.slug, "--rule", str(rule.pk), "--comment", "x", "--user", "member")
    assert Silence.objects.filter(created_by=member).exists()
    with pytest.raises(CommandError, match="--match"):
        run("silence", "--project", project.slug, "--match", "team", "--comment", "x")
    with pytest.raises(CommandError, match="--matchers: Silence a rule"):
        run("silence", "--project", project.slug, "--comment", "x")
    with pytest.raises(CommandError, match="--deployment"):
        run("silence", "--project", project.slug, "--deployment", "nope", "--comment", "x")
    with pytest.raises(CommandError, match="editor role"):
        run("silence", "--project", project.slug, "--rule", str(rule.pk), "--comment", "x", "--user", "viewer")
