"""The beat sweep of work whose worker died: pipeline stages, then HPO trial runs."""

from __future__ import annotations

import logging

from django.utils import timezone

from apps.experiments.services.pipelines import pipeline_stages_reap_stale
from apps.experiments.services.studies import study_trials_reap_stale

logger = logging.getLogger(__name__)


def pipeline_runs_reap_stale() -> int:
    """Run by beat every REAP_INTERVAL; returns how many stages and trial runs it ended (re-queued stages are
    not counted)."""
    now = timezone.now()
    ended = pipeline_stages_reap_stale(now=now) + study_trials_reap_stale(now=now)
    if ended:
        logger.warning("reaped %s stale stages and trial runs", ended)
    return ended
