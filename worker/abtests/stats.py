"""Per-arm sufficient statistics: what the console computes in SQL and the tests need from every arm.

An arm's metric is summarised by `n` (units with an outcome), `total` (sum of the outcomes) and `total_sq`
(sum of their squares). For a rate the outcomes are 0/1, so `total` is the number of conversions and
`total_sq == total`. Mean and variance follow from the three numbers; every statistic the engine computes
is a function of them, so the raw outcomes never leave the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RATE = "rate"
MEAN = "mean"
METRIC_KINDS = (RATE, MEAN)


@dataclass(frozen=True)
class ArmStats:
    n: int
    total: float
    total_sq: float

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must be at least 0")
        if not (math.isfinite(self.total) and math.isfinite(self.total_sq)) or self.total_sq < 0:
            raise ValueError("total and total_sq must be finite, total_sq at least 0")

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def sample_variance(self) -> float | None:
        """Unbiased (n - 1) variance; None below two units. Clamped at 0 against rounding of large sums."""
        if self.n < 2:
            return None
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


def rate_stats(*, conversions: int, n: int) -> ArmStats:
    if not 0 <= conversions <= n:
        raise ValueError("conversions must be between 0 and n")
    return ArmStats(n=n, total=float(conversions), total_sq=float(conversions))


def arm_stats(values: np.ndarray) -> ArmStats:
    """Sufficient statistics of one arm's outcomes; NaN (an outcome not yet posted) is left out."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return ArmStats(n=int(values.size), total=float(values.sum()), total_sq=float(np.square(values).sum()))


def unit_variance(stats: ArmStats, kind: str) -> float | None:
    """Variance of one unit's outcome: p(1 - p) for a rate (the Wald variance), the sample variance for a mean."""
    if kind == RATE:
        if stats.n == 0:
            return None
        p = stats.total / stats.n
        return p * (1 - p)
    return stats.sample_variance


def finite(value: float | None) -> float | None:
    """A float for JSON: NaN and infinities become None (the caller records why)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def normalise_split(split: tuple[float, ...] | list[float]) -> tuple[float, ...]:
    """Traffic shares summing to 1, from shares summing to 1 or percentages summing to 100."""
    if len(split) < 2:
        raise ValueError("split must have at least two arms")
    values = [float(share) for share in split]
    if any(not math.isfinite(share) or share <= 0 for share in values):
        raise ValueError("split: every share must be above 0")
    total = sum(values)
    if math.isclose(total, 100, abs_tol=1e-6):
        return tuple(share / 100 for share in values)
    if math.isclose(total, 1, abs_tol=1e-9):
        return tuple(values)
    raise ValueError(f"split must sum to 1 (or 100), not {total:g}")


def check_alpha(value: float, name: str = "alpha") -> float:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be between 0 and 1 (exclusive)")
    return float(value)
