"""Multiple comparisons against control: Holm's step-down adjustment.

Sort the m p-values ascending, multiply the i-th (from 0) by m - i, take the running maximum and cap at 1.
Holm controls the family-wise error rate under any dependence and is uniformly more powerful than
Bonferroni. It needs only valid p-values, so it applies to the always-valid ones as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def holm(p_values: Sequence[float | None]) -> tuple[float | None, ...]:
    """Holm-adjusted p-values in the input order. An undefined p-value counts as 1 and stays None."""
    m = len(p_values)
    if m == 0:
        return ()
    values = np.array([1.0 if p is None else p for p in p_values], dtype=float)
    order = np.argsort(values, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate(values[order] * (m - np.arange(m))))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return tuple(None if p is None else float(a) for p, a in zip(p_values, adjusted, strict=True))
