"""What a stage or trial has while it runs on the worker: its log, metric sink, cancel check, heartbeat
and resource meter.

Log lines and metric points are buffered and written by the thread that runs the stage, at most every
FLUSH_SECONDS, so a training loop that reports every round does not write to the database every round.
A background thread only bumps `heartbeat_at` every HEARTBEAT_SECONDS (through its own connection),
which is how the reaper and a redelivered task tell a live stage from one whose worker died.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import timedelta

from django.db import close_old_connections, connection
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from apps.experiments.choices import PipelineRunStatus
from apps.experiments.metering import ResourceMeter
from apps.experiments.models import PipelineRun, PipelineStage, Run
from apps.experiments.services.tracking import run_metrics_record
from worker.training.errors import TrainingCancelled

logger = logging.getLogger("apps.experiments.worker")

# The heartbeat bound (see docs/experiments.md, "Reliability"): a running stage or trial bumps its
# heartbeat every HEARTBEAT_SECONDS; its own redelivered message takes over once the heartbeat is
# TAKEOVER_AFTER old; the beat reaper fails it once the heartbeat is REAP_AFTER old.
HEARTBEAT_SECONDS = 2.0
TAKEOVER_AFTER = timedelta(seconds=10)
REAP_AFTER = timedelta(seconds=60)
FLUSH_SECONDS = 0.5
# A cancel is noticed within this long by a training loop that calls should_stop() often.
CANCEL_CHECK_SECONDS = 0.5
MAX_LOG_CHARS = 2_000_000


def _append(model: type, pk: int, text: str) -> None:
    model.objects.filter(pk=pk).update(log=Concat(F("log"), Value(text)))


class StageRuntime:
    """The services' handle on one running stage (or one HPO trial run of the train stage)."""

    def __init__(
        self,
        *,
        pipeline_run_id: int,
        stage_id: int,
        run_ids: Iterable[int] = (),
        metric_run_id: int | None = None,
        log_prefix: str = "",
        stage_log: bool = True,
    ) -> None:
        self.pipeline_run_id = pipeline_run_id
        self.stage_id = stage_id
        self.run_ids = [pk for pk in run_ids if pk]
        self.metric_run_id = metric_run_id
        self.log_prefix = log_prefix
        self.stage_log = stage_log
        self.meter = ResourceMeter()
        self._lines: list[str] = []
        self._points: list[tuple[str, int, float]] = []
        self._last_flush = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False
        self._log_chars = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Lifecycle

    def start(self) -> StageRuntime:
        self.meter.start()
        self._beat()
        self._thread = threading.Thread(target=self._heartbeat_loop, name=f"heartbeat-stage-{self.stage_id}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS * 2)
        self.flush()
        self.meter.stop()

    def _beat(self) -> None:
        now = timezone.now()
        PipelineStage.objects.filter(pk=self.stage_id).update(heartbeat_at=now)
        PipelineRun.objects.filter(pk=self.pipeline_run_id).update(heartbeat_at=now)
        if self.run_ids:
            Run.objects.filter(pk__in=self.run_ids).update(heartbeat_at=now)

    def _heartbeat_loop(self) -> None:
        try:
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    self.meter.sample()
                    self._beat()
                except Exception:  # a database blip must not kill the heartbeat; the next beat retries
                    logger.exception("heartbeat of stage %s failed", self.stage_id)
                    close_old_connections()
        finally:
            connection.close()

    # What the stage calls

    def log(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        line = f"{stamp} {self.log_prefix}{message}"
        logger.info("pipeline run %s: %s", self.pipeline_run_id, line)
        self._lines.append(line)
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def metric(self, name: str, step: int, value: float) -> None:
        if self.metric_run_id is None:
            return
        self._points.append((name, int(step), float(value)))
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def should_stop(self) -> bool:
        """True once the pipeline run is being cancelled; reads the row at most every CANCEL_CHECK_SECONDS."""
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check >= CANCEL_CHECK_SECONDS:
            self._last_cancel_check = now
            status = PipelineRun.objects.filter(pk=self.pipeline_run_id).values_list("status", flat=True).first()
            self._cancelled = status in (PipelineRunStatus.CANCELLING, PipelineRunStatus.CANCELLED, None)
        return self._cancelled

    def check_cancelled(self) -> None:
        self._last_cancel_check = 0.0
        if self.should_stop():
            raise TrainingCancelled("the pipeline run was cancelled")

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if self._lines:
            text = "".join(f"{line}\n" for line in self._lines)
            self._lines = []
            if self._log_chars < MAX_LOG_CHARS:
                self._log_chars += len(text)
                if self.stage_log:
                    _append(PipelineStage, self.stage_id, text)
                for run_id in self.run_ids:
                    _append(Run, run_id, text)
        if self._points and self.metric_run_id is not None:
            points, self._points = self._points, []
            run_metrics_record(run_id=self.metric_run_id, points=points)
