"""Sequential analysis: the mixture sequential probability ratio test (mSPRT) with a normal mixture.

Johari, Koomen, Pekelis & Walsh (2017), "Peeking at A/B tests: why it matters, and what to do about it"
(KDD '17), the method behind Optimizely's Stats Engine. With the difference estimate d (treatment - control),
its variance V (the unpooled variance of the fixed-horizon test, estimated from the data) and a normal
mixing distribution N(0, τ²) over the true difference, the mixture likelihood ratio against "no difference" is

    Λ = sqrt(V / (V + τ²)) · exp(τ² d² / (2 V (V + τ²)))

Λ is a nonnegative martingale under the null, so by Ville's inequality P(ever Λ ≥ 1/α) ≤ α: the always-valid
p-value is the running minimum of min(1, 1/Λ), and the confidence sequence at level 1 - α is the set of
differences θ with Λ(θ) < 1/α, i.e. d ± w·sqrt(V) with

    w = sqrt((V + τ²)/τ² · (2 log(1/α) + log((V + τ²)/V)))

intersected over the looks. τ² is chosen so that the interval is tightest at the planned sample size:
τ² = r(α) · V_planned with r(α) = 2 log(1/α) + log(1 + 2 log(1/α)), the approximation of Howard, Ramdas,
McAuliffe & Sekhon (2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences"). At V = V_planned
the multiplier w is then a constant of α alone (3.04 at α = 0.05, against 1.96 for one look), which the power
calculation uses to size a sequential test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.abtests.fixed import FixedResult
from worker.abtests.stats import finite


def mixing_ratio(alpha: float) -> float:
    """r(α) = τ² / V_planned, the mixing variance in units of the planned variance of the difference."""
    log_term = 2 * math.log(1 / alpha)
    return log_term + math.log(1 + log_term)


def mixing_variance(*, planned_variance: float, alpha: float) -> float:
    """τ² tuned for the planned variance of the difference estimate (its variance at the planned sample)."""
    return mixing_ratio(alpha) * planned_variance


def boundary_multiplier(*, variance: np.ndarray | float, tau2: float, alpha: float) -> np.ndarray | float:
    """w: the confidence sequence's half-width in standard errors at variance V. Works on arrays."""
    variance = np.asarray(variance, dtype=float)
    ratio = (variance + tau2) / variance
    result = np.sqrt(ratio * variance / tau2 * (2 * math.log(1 / alpha) + np.log(ratio)))
    return float(result) if result.ndim == 0 else result


def planned_multiplier(alpha: float) -> float:
    """w at the planned sample size, where V = V_planned and τ² = r(α) V_planned."""
    return float(boundary_multiplier(variance=1.0, tau2=mixing_ratio(alpha), alpha=alpha))


def always_valid_p_value(
    *, difference: np.ndarray | float, variance: np.ndarray | float, tau2: float
) -> np.ndarray | float:
    """min(1, 1/Λ) at one look (not yet the running minimum over looks). Works on arrays."""
    difference = np.asarray(difference, dtype=float)
    variance = np.asarray(variance, dtype=float)
    total = variance + tau2
    log_lr = 0.5 * np.log(variance / total) + tau2 * difference**2 / (2 * variance * total)
    result = np.exp(-np.maximum(log_lr, 0.0))
    return float(result) if result.ndim == 0 else result


@dataclass(frozen=True)
class SequentialResult:
    method: str
    tau2: float | None
    p_value: float | None
    cs_low: float | None
    cs_high: float | None
    lift_cs_low: float | None
    lift_cs_high: float | None
    confidence: float
    reason: str | None = None


METHOD = "mSPRT, normal mixture (Johari et al. 2017)"


def _intersect(
    low: float | None, high: float | None, previous: Mapping[str, Any] | None, keys: tuple[str, str]
) -> tuple[float | None, float | None]:
    if low is None or previous is None or previous.get(keys[0]) is None or previous.get(keys[1]) is None:
        return low, high
    new_low, new_high = max(low, previous[keys[0]]), min(high, previous[keys[1]])
    # An empty intersection means the plug-in variance moved a lot between looks; keep today's interval
    # rather than report an impossible one.
    return (new_low, new_high) if new_low <= new_high else (low, high)


def sequential_compare(
    *, fixed: FixedResult, planned_variance: float | None, alpha: float, previous: Mapping[str, Any] | None = None
) -> SequentialResult:
    """Always-valid p-value and confidence sequence for the comparison `fixed` describes.

    `previous` is the same comparison's SequentialResult (as a dict) from the last look, if any: the p-value
    is its running minimum and the intervals are intersected with the earlier ones.
    """
    confidence = 1 - alpha
    if fixed.std_error is None or fixed.difference is None:
        return SequentialResult(METHOD, None, None, None, None, None, None, confidence, fixed.reason)
    if not planned_variance or planned_variance <= 0:
        return SequentialResult(
            METHOD, None, None, None, None, None, None, confidence, "no variance to plan the mixture on"
        )
    tau2 = mixing_variance(planned_variance=planned_variance, alpha=alpha)
    variance = fixed.std_error**2
    p_value = always_valid_p_value(difference=fixed.difference, variance=variance, tau2=tau2)
    w = boundary_multiplier(variance=variance, tau2=tau2, alpha=alpha)
    low, high = fixed.difference - w * fixed.std_error, fixed.difference + w * fixed.std_error
    lift_low = lift_high = None
    if fixed.lift is not None and fixed.lift_std_error is not None:
        lift_low, lift_high = fixed.lift - w * fixed.lift_std_error, fixed.lift + w * fixed.lift_std_error
    if previous is not None and previous.get("p_value") is not None:
        p_value = min(p_value, previous["p_value"])
    low, high = _intersect(low, high, previous, ("cs_low", "cs_high"))
    lift_low, lift_high = _intersect(lift_low, lift_high, previous, ("lift_cs_low", "lift_cs_high"))
    return SequentialResult(
        METHOD,
        finite(tau2),
        finite(p_value),
        finite(low),
        finite(high),
        finite(lift_low),
        finite(lift_high),
        confidence,
        fixed.reason,
    )
