"""Races on Postgres: two approvals of one request, and two registrations of one model, each in its own thread
with its own database connection, released together by a barrier."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from apps.core.exceptions import Conflict
from apps.registry import services
from apps.registry.choices import ModelVersionStage, PromotionRequestStatus
from apps.registry.models import ModelVersion, PromotionApproval
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


def race(*calls: Callable[[], Any], timeout: float = 60.0) -> list[Any]:
    """Run the calls at the same moment in threads; returns each call's result or the exception it raised.

    A call still running after `timeout` seconds fails the test: it has no result to count (a deadlock, say)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def worker(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except Exception as exc:  # collected for the assertions
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    stuck = [index for index, thread in enumerate(threads) if thread.is_alive()]
    if stuck:
        pytest.fail(f"calls {stuck} of the race were still running after {timeout:.0f} s")
    return results


def test_a_call_still_running_after_the_timeout_fails_the_race() -> None:
    release = threading.Event()
    try:
        with pytest.raises(pytest.fail.Exception, match=r"calls \[1\] of the race were still running"):
            race(lambda: "done", lambda: release.wait(30), timeout=0.5)
    finally:
        release.set()


def test_two_racing_approvals_make_exactly_one_transition(project, two_versions, member, approver) -> None:
    second_approver = UserFactory(username="approver-2")
    MembershipFactory(project=project, user=second_approver, role="approver")
    version = two_versions[0]
    promotion = services.promotion_request_create(version=version, actor=member, target_stage="production")

    results = race(
        lambda: services.promotion_request_approve(request=promotion, actor=approver),
        lambda: services.promotion_request_approve(request=promotion, actor=second_approver),
    )

    conflicts = [r for r in results if isinstance(r, Conflict)]
    successes = [r for r in results if not isinstance(r, Exception)]
    assert len(successes) == 1 and len(conflicts) == 1, results
    promotion.refresh_from_db()
    version.refresh_from_db()
    assert promotion.status == PromotionRequestStatus.APPROVED
    assert version.stage == ModelVersionStage.PRODUCTION
    assert PromotionApproval.objects.filter(request=promotion).count() == 1
    assert ModelVersion.objects.filter(stage=ModelVersionStage.PRODUCTION).count() == 1


def test_two_racing_production_promotions_of_different_versions_leave_one_in_production(
    two_versions, member, approver, owner
) -> None:
    v1, v2 = two_versions
    first = services.promotion_request_create(version=v1, actor=member, target_stage="production")
    second = services.promotion_request_create(version=v2, actor=member, target_stage="production")
    results = race(
        lambda: services.promotion_request_approve(request=first, actor=approver),
        lambda: services.promotion_request_approve(request=second, actor=owner),
    )
    assert not any(isinstance(r, Exception) for r in results), results
    assert ModelVersion.objects.filter(stage=ModelVersionStage.PRODUCTION).count() == 1
    assert ModelVersion.objects.filter(stage=ModelVersionStage.ARCHIVED).count() == 1


def test_racing_registrations_never_share_a_number(register) -> None:
    results = race(*[lambda: register("raced") for _ in range(3)])
    assert not any(isinstance(r, Exception) for r in results), results
    assert sorted(v.number for v in results) == [1, 2, 3]
