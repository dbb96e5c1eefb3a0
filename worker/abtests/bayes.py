"""The Bayesian readout, shown beside the frequentist one: P(treatment beats control) and expected loss.

Rates: Beta-Binomial with a uniform Beta(1, 1) prior, so each arm's posterior is Beta(1 + conversions,
1 + failures). With C and T the posterior rates,

    P(T > C) = E_C[1 - F_T(C)]
    E[max(C - T, 0)] = E_C[C · F_T(C) - μ_T · F_T⁺(C)]   (T⁺ ~ Beta(a_T + 1, b_T): E[T; T < c] = μ_T F_T⁺(c))

integrated numerically over C's quantiles (midpoint rule on `GRID` points) — deterministic, no sampling.
Means: the normal approximation with a flat prior, D = T - C ~ N(d, V) (d and V of the fixed-horizon test),
so P(D > 0) = Φ(d / √V) and E[max(-D, 0)] = √V φ(d / √V) - d Φ(-d / √V).

"Better" follows the metric's direction. The expected loss of shipping an arm is what is given up, in the
metric's units, if the other arm is in fact better: ship when it is below what you are willing to lose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from worker.abtests.fixed import FixedResult
from worker.abtests.stats import ArmStats, finite

GRID = 20_000


@dataclass(frozen=True)
class BayesianResult:
    method: str
    prob_treatment_better: float | None
    expected_loss_treatment: float | None
    expected_loss_control: float | None
    reason: str | None = None


def _oriented(
    method: str, p_greater: float, loss_if_greater_wrong: float, mean_gap: float, higher_is_better: bool
) -> BayesianResult:
    """From P(T > C) and E[max(C - T, 0)] to the metric's direction of "better"."""
    loss_other = mean_gap + loss_if_greater_wrong  # E[max(T - C, 0)] = E[T - C] + E[max(C - T, 0)]
    if higher_is_better:
        prob, loss_t, loss_c = p_greater, loss_if_greater_wrong, loss_other
    else:
        prob, loss_t, loss_c = 1 - p_greater, loss_other, loss_if_greater_wrong
    return BayesianResult(method, finite(min(1.0, max(0.0, prob))), finite(max(0.0, loss_t)), finite(max(0.0, loss_c)))


def bayes_rates(*, control: ArmStats, treatment: ArmStats, higher_is_better: bool = True) -> BayesianResult:
    a_c, b_c = 1 + control.total, 1 + control.n - control.total
    a_t, b_t = 1 + treatment.total, 1 + treatment.n - treatment.total
    quantiles = (np.arange(GRID) + 0.5) / GRID
    c = scipy_stats.beta.ppf(quantiles, a_c, b_c)
    p_greater = float(scipy_stats.beta.sf(c, a_t, b_t).mean())
    mean_t, mean_c = a_t / (a_t + b_t), a_c / (a_c + b_c)
    loss = float((c * scipy_stats.beta.cdf(c, a_t, b_t) - mean_t * scipy_stats.beta.cdf(c, a_t + 1, b_t)).mean())
    return _oriented("Beta-Binomial, uniform prior", p_greater, loss, mean_t - mean_c, higher_is_better)


def bayes_means(*, fixed: FixedResult, higher_is_better: bool = True) -> BayesianResult:
    method = "normal approximation, flat prior"
    if fixed.std_error is None or fixed.difference is None:
        return BayesianResult(method, None, None, None, fixed.reason)
    d, s = fixed.difference, fixed.std_error
    p_greater = float(scipy_stats.norm.cdf(d / s))
    loss = s * float(scipy_stats.norm.pdf(d / s)) - d * float(scipy_stats.norm.cdf(-d / s))
    if not math.isfinite(loss):
        return BayesianResult(method, None, None, None, "the posterior is degenerate")
    return _oriented(method, p_greater, loss, d, higher_is_better)
