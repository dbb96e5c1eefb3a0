"""Sample-ratio mismatch: do the assignment counts fit the configured split?

Pearson's chi-square goodness-of-fit test of the observed counts against total × share, with
(arms - 1) degrees of freedom. A p-value below `SRM_P_THRESHOLD` (0.001, the threshold GrowthBook, Eppo
and Statsig use) means the assignment is broken (a sticky key that is not sticky, a bot hitting one arm,
outcomes lost for one version), so every comparison of the arms is biased and the readout decides nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from worker.abtests.stats import finite

SRM_P_THRESHOLD = 0.001


@dataclass(frozen=True)
class SrmResult:
    counts: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float | None
    df: int
    p_value: float | None
    invalid: bool
    reason: str | None


def srm_check(*, counts: Sequence[int], split: Sequence[float]) -> SrmResult:
    """Chi-square goodness of fit of `counts` against `split` (shares summing to 1, same order as counts)."""
    if len(counts) != len(split) or len(counts) < 2:
        raise ValueError("counts and split must have the same length, at least 2")
    if any(count < 0 for count in counts):
        raise ValueError("counts must be at least 0")
    observed = np.asarray(counts, dtype=float)
    total = observed.sum()
    expected = total * np.asarray(split, dtype=float)
    df = len(counts) - 1
    if total == 0:
        return SrmResult(tuple(counts), tuple(expected.tolist()), None, df, None, False, "no assignments yet")
    chi2, p_value = scipy_stats.chisquare(observed, expected)
    invalid = bool(p_value < SRM_P_THRESHOLD)
    reason = (
        f"sample ratio mismatch: p = {p_value:.2g} < {SRM_P_THRESHOLD} — the assignment is broken, the readout "
        "decides nothing"
        if invalid
        else None
    )
    return SrmResult(
        tuple(int(c) for c in counts), tuple(expected.tolist()), finite(chi2), df, finite(p_value), invalid, reason
    )
