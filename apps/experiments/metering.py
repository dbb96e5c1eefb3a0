"""CPU time and peak memory of the worker process during one stage or trial. Django-free.

The peak is the kernel's RSS high-water mark (VmHWM). On Linux it is reset at the start of the
measurement by writing 5 to /proc/self/clear_refs, so a stage's peak is its own and not that of an
earlier, larger stage the same prefork child ran. Elsewhere, `resource.getrusage` gives the
process's lifetime peak, which is an upper bound; `sample()` (called from the heartbeat thread)
adds the current RSS as a floor.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _high_water_mark() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class ResourceMeter:
    """Wall time, CPU time and peak RSS between `start()` and `stop()`."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.wall_started = 0.0
        self.cpu_started = 0.0
        self.sampled_peak = 0
        self.exact = False
        self.duration_seconds = 0.0
        self.cpu_seconds = 0.0
        self.peak_rss_bytes = 0

    def start(self) -> ResourceMeter:
        self.exact = _reset_high_water_mark()
        self.sampled_peak = self.process.memory_info().rss
        self.cpu_started = _cpu_seconds()
        self.wall_started = time.perf_counter()
        return self

    def sample(self) -> None:
        self.sampled_peak = max(self.sampled_peak, self.process.memory_info().rss)

    def stop(self) -> ResourceMeter:
        self.duration_seconds = time.perf_counter() - self.wall_started
        self.cpu_seconds = _cpu_seconds() - self.cpu_started
        self.sample()
        hwm = _high_water_mark() if self.exact else None
        if hwm is None:
            lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
            hwm = lifetime if sys.platform == "darwin" else lifetime * 1024
        self.peak_rss_bytes = max(hwm, self.sampled_peak)
        return self
