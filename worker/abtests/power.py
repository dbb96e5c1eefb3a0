"""Power and sample size, up front: how many units each arm needs to detect the MDE.

For each treatment against control, with traffic ratio k = share_t / share_c, the two-sided z-test needs

    n_c = (q + z_power)² · (σ_c² + σ_t² / k) / MDE²,   n_t = k · n_c

where σ² is the unit variance (p(1 - p) at the baseline rate and at baseline + MDE for a rate; the given
standard deviation squared for a mean) and q is the critical value: z_{1 - α'/2} for a fixed-horizon test,
the mSPRT multiplier w(α') at the planned sample size for a sequential one (see sequential.py). With more
than one treatment α' = α / (arms - 1), the Bonferroni level, which the Holm procedure never needs more than.
The plan takes the largest control size over the treatments and spreads total = n_c / share_c over the arms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats as scipy_stats

from worker.abtests.sequential import planned_multiplier
from worker.abtests.stats import MEAN, METRIC_KINDS, RATE, check_alpha, normalise_split


@dataclass(frozen=True)
class SamplePlan:
    per_arm: tuple[int, ...]
    total: int
    fixed_horizon_per_arm: tuple[int, ...]
    sequential: bool
    inflation: float
    alpha_per_comparison: float
    mde_absolute: float
    expected_days: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def absolute_mde(*, kind: str, baseline: float, mde: float, relative: bool) -> float:
    if not math.isfinite(mde) or mde <= 0:
        raise ValueError("mde must be above 0")
    absolute = mde * abs(baseline) if relative else mde
    if absolute <= 0:
        raise ValueError("mde: a relative MDE needs a baseline other than 0")
    if kind == RATE and baseline + absolute >= 1:
        raise ValueError("mde: baseline rate + MDE must stay below 1")
    return absolute


def sample_size(
    *,
    kind: str,
    baseline: float,
    mde: float,
    sd: float | None = None,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    split: Sequence[float] = (0.5, 0.5),
    sequential: bool = True,
    traffic_per_day: float | None = None,
) -> SamplePlan:
    """Units per arm (control first, in `split` order) to detect `mde` with `power` at level `alpha`."""
    if kind not in METRIC_KINDS:
        raise ValueError(f"kind must be one of {', '.join(METRIC_KINDS)}")
    check_alpha(alpha)
    check_alpha(power, "power")
    shares = normalise_split(list(split))
    if kind == RATE:
        if not 0 < baseline < 1:
            raise ValueError("baseline must be a rate between 0 and 1 (exclusive)")
    elif sd is None or not math.isfinite(sd) or sd <= 0:
        raise ValueError("sd must be above 0 for a mean metric")
    difference = absolute_mde(kind=kind, baseline=baseline, mde=mde, relative=relative)
    if kind == MEAN:
        var_c = var_t = sd**2
    else:
        var_c, var_t = baseline * (1 - baseline), (baseline + difference) * (1 - baseline - difference)
    if traffic_per_day is not None and (not math.isfinite(traffic_per_day) or traffic_per_day <= 0):
        raise ValueError("traffic_per_day must be above 0")
    alpha_each = alpha / (len(shares) - 1)
    z_power = scipy_stats.norm.ppf(power)
    fixed_q = scipy_stats.norm.isf(alpha_each / 2)
    q = planned_multiplier(alpha_each) if sequential else fixed_q

    def spread(critical: float) -> tuple[int, ...]:
        control = max(
            (critical + z_power) ** 2 * (var_c + var_t * shares[0] / share) / difference**2 for share in shares[1:]
        )
        total = control / shares[0]
        return tuple(math.ceil(total * share) for share in shares)

    per_arm, fixed_per_arm = spread(q), spread(fixed_q)
    total = sum(per_arm)
    return SamplePlan(
        per_arm=per_arm,
        total=total,
        fixed_horizon_per_arm=fixed_per_arm,
        sequential=sequential,
        inflation=float(((q + z_power) / (fixed_q + z_power)) ** 2),
        alpha_per_comparison=alpha_each,
        mde_absolute=difference,
        expected_days=total / traffic_per_day if traffic_per_day else None,
    )
