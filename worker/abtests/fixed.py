"""Fixed-horizon comparison of a treatment arm with control: valid when looked at once, at the planned size.

Rates: the two-proportion Wald z-test with the unpooled variance p_t(1 - p_t)/n_t + p_c(1 - p_c)/n_c, the
same variance as its confidence interval, so the test rejects exactly when the interval excludes 0
(statsmodels' `test_proportions_2indep(method="wald")` and `confint_proportions_2indep(method="wald")`).
Means: Welch's t-test, Welch–Satterthwaite degrees of freedom (scipy's `ttest_ind(equal_var=False)`).
The relative lift t/c - 1 gets a delta-method interval with a normal quantile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as scipy_stats

from worker.abtests.stats import MEAN, RATE, ArmStats, finite, unit_variance


@dataclass(frozen=True)
class FixedResult:
    kind: str
    control_mean: float | None
    treatment_mean: float | None
    difference: float | None
    std_error: float | None
    statistic: float | None
    df: float | None
    p_value: float | None
    ci_low: float | None
    ci_high: float | None
    lift: float | None
    lift_std_error: float | None
    lift_ci_low: float | None
    lift_ci_high: float | None
    confidence: float
    reason: str | None = None


def mean_variances(*, control: ArmStats, treatment: ArmStats, kind: str) -> tuple[float, float] | None:
    """Variances of the two arms' means (unit variance / n), None when either is undefined."""
    minimum = 1 if kind == RATE else 2
    if control.n < minimum or treatment.n < minimum:
        return None
    return unit_variance(control, kind) / control.n, unit_variance(treatment, kind) / treatment.n


def lift_std_error(*, control_mean: float, treatment_mean: float, variances: tuple[float, float]) -> float:
    """Delta method: Var(t/c) ≈ Var(t)/c² + t² Var(c)/c⁴ (independent arms)."""
    var_c, var_t = variances
    return math.sqrt(var_t / control_mean**2 + treatment_mean**2 * var_c / control_mean**4)


def _empty(kind: str, control: ArmStats, treatment: ArmStats, confidence: float, reason: str) -> FixedResult:
    c, t = control.mean, treatment.mean
    difference = t - c if c is not None and t is not None else None
    return FixedResult(
        kind, c, t, difference, None, None, None, None, None, None, None, None, None, None, confidence, reason
    )


def compare(*, control: ArmStats, treatment: ArmStats, kind: str, alpha: float) -> FixedResult:
    """The fixed-horizon test and (1 - alpha) intervals of treatment - control and of the relative lift."""
    if kind not in (RATE, MEAN):
        raise ValueError(f"kind must be one of {RATE!r}, {MEAN!r}")
    confidence = 1 - alpha
    for name, arm in (("control", control), ("treatment", treatment)):
        if kind == RATE and not 0 <= arm.total <= arm.n:
            raise ValueError(f"{name}: conversions must be between 0 and n")
    variances = mean_variances(control=control, treatment=treatment, kind=kind)
    if variances is None:
        needed = "a unit" if kind == RATE else "two units"
        return _empty(kind, control, treatment, confidence, f"each arm needs at least {needed}")
    c, t = control.mean, treatment.mean
    difference = t - c
    std_error = math.sqrt(variances[0] + variances[1])
    if std_error == 0:
        return _empty(kind, control, treatment, confidence, "no variance in either arm: the test is undefined")
    statistic = difference / std_error
    if kind == RATE:
        df = None
        p_value = 2 * scipy_stats.norm.sf(abs(statistic))
        quantile = scipy_stats.norm.isf(alpha / 2)
    else:
        var_c, var_t = variances
        df = (var_c + var_t) ** 2 / (var_c**2 / (control.n - 1) + var_t**2 / (treatment.n - 1))
        p_value = 2 * scipy_stats.t.sf(abs(statistic), df)
        quantile = scipy_stats.t.isf(alpha / 2, df)
    lift = lift_se = lift_low = lift_high = None
    reason = None
    if c == 0:
        reason = "control mean is 0: the relative lift is undefined"
    else:
        lift = t / c - 1
        lift_se = lift_std_error(control_mean=c, treatment_mean=t, variances=variances)
        z = scipy_stats.norm.isf(alpha / 2)
        lift_low, lift_high = lift - z * lift_se, lift + z * lift_se
    return FixedResult(
        kind=kind,
        control_mean=c,
        treatment_mean=t,
        difference=difference,
        std_error=std_error,
        statistic=finite(statistic),
        df=finite(df),
        p_value=finite(p_value),
        ci_low=difference - quantile * std_error,
        ci_high=difference + quantile * std_error,
        lift=finite(lift),
        lift_std_error=finite(lift_se),
        lift_ci_low=finite(lift_low),
        lift_ci_high=finite(lift_high),
        confidence=confidence,
        reason=reason,
    )
