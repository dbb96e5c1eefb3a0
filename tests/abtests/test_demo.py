"""The demo command leaves two finished A/B tests with a real readout, and a second run changes nothing."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from apps.abtests.models import ABTest, ABTestReadout, Outcome
from apps.deployments.models import Deployment
from apps.telemetry.models import PredictionLabel

pytestmark = pytest.mark.django_db


def test_demo_abtests_are_finished_with_a_readout_and_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "demo-password-for-tests")
    call_command("seed_demo", stdout=StringIO())
    call_command("load_demo_registry", stdout=StringIO())
    call_command("load_demo_abtests", stdout=StringIO())
    tests = list(ABTest.objects.order_by("pk"))
    assert [t.status for t in tests] == ["stopped", "stopped"]
    assert [t.decision for t in tests] == ["treatment wins", "treatment wins"]
    assert all(t.winner.number == 2 for t in tests)
    assert PredictionLabel.objects.count() > 1_000 and Outcome.objects.count() > 1_000
    for abtest in tests:
        readouts = list(abtest.readouts.order_by("as_of"))
        assert len(readouts) == 6 and not any(r.srm_invalid for r in readouts)
        assert readouts[-1].as_of == abtest.stopped_at
    assert Deployment.objects.get(name="iris-ab").status == "stopped"
    counts = (ABTest.objects.count(), ABTestReadout.objects.count(), Outcome.objects.count())
    out = StringIO()
    call_command("load_demo_abtests", stdout=out)
    assert "already there" in out.getvalue()
    assert (ABTest.objects.count(), ABTestReadout.objects.count(), Outcome.objects.count()) == counts
