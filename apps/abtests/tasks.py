"""Celery tasks of A/B tests: thin wrappers that call one service. Safe to run twice (a second readout is one
more point on the chart, continuing the sequential analysis)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="abtests.readouts_refresh", soft_time_limit=600, time_limit=660)
def abtests_readouts_refresh_task() -> int:
    """Beat: a readout of every running test."""
    from apps.abtests.services import abtest_readouts_refresh

    return abtest_readouts_refresh()
