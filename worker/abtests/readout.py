"""The readout of an A/B test: SRM check, per-arm comparisons with control, guardrails, and the decision.

`readout(...)` takes the per-arm sufficient statistics of the primary metric and of each guardrail, the
assignment counts and the test's configuration, and returns a `Readout` holding the decision and every
number behind it. Both analyses are always computed; `config.sequential` (on by default) picks the one
that decides:

- sequential: the Holm-adjusted always-valid p-value and the confidence sequence, valid at every look;
- fixed horizon: the Holm-adjusted z/Welch p-value and confidence interval, and only once every arm has
  reached its planned sample (looking earlier is the peeking the sequential test exists to allow).

With more than one treatment the intervals are at the Bonferroni level α / (arms - 1).

Per treatment arm, in the metric's direction of "better":

- "treatment wins": adjusted p < α and the treatment is better;
- "control wins": adjusted p < α and the treatment is worse, or any guardrail is breached (a breach
  overrides a win);
- "no detectable difference": the interval lies within (-MDE, +MDE) (on the relative lift when the MDE is
  relative);
- "keep running": anything else, including an undefined test (too few units, no variance).

A guardrail is breached when its interval shows the treatment worse than control by more than the
guardrail's margin (the interval's better end is beyond the margin: a one-sided test at α / 2).

Overall: an SRM-invalid readout decides nothing ("invalid"); a winning arm makes "treatment wins" (the one
with the largest improvement); arms all "control wins" or "no detectable difference", at least one of the
former, make "control wins"; all "no detectable difference" make that; else "keep running".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from worker.abtests import bayes
from worker.abtests.fixed import FixedResult, compare
from worker.abtests.multiple import holm
from worker.abtests.sequential import SequentialResult, sequential_compare
from worker.abtests.srm import SrmResult, srm_check
from worker.abtests.stats import METRIC_KINDS, RATE, ArmStats, check_alpha, normalise_split, unit_variance


class Decision:
    TREATMENT_WINS = "treatment wins"
    CONTROL_WINS = "control wins"
    NO_DIFFERENCE = "no detectable difference"
    KEEP_RUNNING = "keep running"
    INVALID = "invalid"


SEQUENTIAL = "sequential"
FIXED_HORIZON = "fixed horizon"


def _check_metric(name: str, kind: str, where: str) -> None:
    if not name:
        raise ValueError(f"{where}.name must not be empty")
    if kind not in METRIC_KINDS:
        raise ValueError(f"{where}.kind must be one of {', '.join(METRIC_KINDS)}")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        _check_metric(self.name, self.kind, "primary")


@dataclass(frozen=True)
class GuardrailSpec:
    """A metric the treatment must not make worse by more than `margin` (absolute, in the metric's units)."""

    name: str
    kind: str
    margin: float = 0.0
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        _check_metric(self.name, self.kind, "guardrails")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise ValueError(f"guardrails.{self.name}.margin must be at least 0")


@dataclass(frozen=True)
class ABConfig:
    """arms: control first. split: shares (sum 1) or percentages (sum 100). planned_total: units over all arms."""

    arms: tuple[str, ...]
    split: tuple[float, ...]
    primary: MetricSpec
    mde: float
    planned_total: int
    mde_relative: bool = False
    alpha: float = 0.05
    sequential: bool = True
    guardrails: tuple[GuardrailSpec, ...] = ()

    def __post_init__(self) -> None:
        if len(self.arms) < 2 or len(set(self.arms)) != len(self.arms):
            raise ValueError("arms must name at least two distinct arms, control first")
        if len(self.split) != len(self.arms):
            raise ValueError("split must have one share per arm")
        object.__setattr__(self, "arms", tuple(self.arms))
        object.__setattr__(self, "split", normalise_split(list(self.split)))
        check_alpha(self.alpha)
        if not math.isfinite(self.mde) or self.mde <= 0:
            raise ValueError("mde must be above 0")
        if self.planned_total < 1:
            raise ValueError("planned_total must be at least 1")
        object.__setattr__(self, "guardrails", tuple(self.guardrails))
        if len({g.name for g in self.guardrails}) != len(self.guardrails):
            raise ValueError("guardrails must have distinct names")

    @property
    def alpha_per_comparison(self) -> float:
        return self.alpha / (len(self.arms) - 1)

    def planned_per_arm(self) -> dict[str, float]:
        return {arm: self.planned_total * share for arm, share in zip(self.arms, self.split, strict=True)}


@dataclass(frozen=True)
class GuardrailResult:
    name: str
    margin: float
    higher_is_better: bool
    fixed: FixedResult
    sequential: SequentialResult
    deterioration: float | None
    deterioration_low: float | None
    deterioration_high: float | None
    breached: bool
    reason: str | None


@dataclass(frozen=True)
class ArmComparison:
    arm: str
    fixed: FixedResult
    sequential: SequentialResult
    p_value_holm: float | None
    sequential_p_value_holm: float | None
    bayesian: bayes.BayesianResult
    guardrails: tuple[GuardrailResult, ...]
    decision: str
    reason: str


@dataclass(frozen=True)
class ArmSummary:
    name: str
    share: float
    assigned: int
    n: int
    mean: float | None
    planned: int


@dataclass(frozen=True)
class Readout:
    decision: str
    reason: str
    winner: str | None
    analysis: str
    srm: SrmResult
    arms: tuple[ArmSummary, ...]
    comparisons: tuple[ArmComparison, ...]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _planned_variance(control: ArmStats, treatment: ArmStats, kind: str, planned: tuple[float, float]) -> float | None:
    """V_planned: today's unit variances at the planned sample sizes (the plug-in the mSPRT runs on)."""
    var_c, var_t = unit_variance(control, kind), unit_variance(treatment, kind)
    if var_c is None or var_t is None:
        return None
    return var_c / planned[0] + var_t / planned[1]


def _previous_sequential(previous: Mapping[str, Any] | None, arm: str, guardrail: str | None = None) -> Any:
    for comparison in (previous or {}).get("comparisons") or ():
        if comparison.get("arm") != arm:
            continue
        if guardrail is None:
            return comparison.get("sequential")
        for result in comparison.get("guardrails") or ():
            if result.get("name") == guardrail:
                return result.get("sequential")
    return None


def _active_interval(
    config: ABConfig, fixed: FixedResult, sequential: SequentialResult, relative: bool
) -> tuple[float | None, float | None]:
    if config.sequential:
        return (
            (sequential.lift_cs_low, sequential.lift_cs_high) if relative else (sequential.cs_low, sequential.cs_high)
        )
    return (fixed.lift_ci_low, fixed.lift_ci_high) if relative else (fixed.ci_low, fixed.ci_high)


def _guardrail(
    spec: GuardrailSpec,
    *,
    config: ABConfig,
    control: ArmStats | None,
    treatment: ArmStats | None,
    planned: tuple[float, float],
    previous: Mapping[str, Any] | None,
) -> GuardrailResult:
    alpha = config.alpha_per_comparison
    empty = ArmStats(0, 0.0, 0.0)
    control, treatment = control or empty, treatment or empty
    fixed = compare(control=control, treatment=treatment, kind=spec.kind, alpha=alpha)
    sequential = sequential_compare(
        fixed=fixed,
        planned_variance=_planned_variance(control, treatment, spec.kind, planned),
        alpha=alpha,
        previous=previous,
    )
    low, high = _active_interval(config, fixed, sequential, relative=False)
    sign = -1 if spec.higher_is_better else 1  # deterioration = sign × (treatment - control)
    deterioration = sign * fixed.difference if fixed.difference is not None else None
    if low is None or high is None:
        reason = fixed.reason or sequential.reason or "not enough data"
        return GuardrailResult(
            spec.name, spec.margin, spec.higher_is_better, fixed, sequential, deterioration, None, None, False, reason
        )
    det_low, det_high = sorted((sign * low, sign * high))
    breached = det_low > spec.margin
    reason = (
        f"{spec.name} is worse by at least {det_low:.4g} (allowed {spec.margin:.4g})"
        if breached
        else f"{spec.name}: no deterioration beyond {spec.margin:.4g} shown"
    )
    return GuardrailResult(
        spec.name,
        spec.margin,
        spec.higher_is_better,
        fixed,
        sequential,
        deterioration,
        det_low,
        det_high,
        breached,
        reason,
    )


def _arm_decision(
    *,
    config: ABConfig,
    fixed: FixedResult,
    sequential: SequentialResult,
    p_adjusted: float | None,
    guardrails: Sequence[GuardrailResult],
    reached_plan: bool,
) -> tuple[str, str]:
    breaches = [g.reason for g in guardrails if g.breached]
    if not config.sequential and not reached_plan:
        return Decision.KEEP_RUNNING, "fixed-horizon analysis: decides only once every arm reaches its planned sample"
    if breaches:
        return Decision.CONTROL_WINS, "guardrail breached: " + "; ".join(breaches)
    low, high = _active_interval(config, fixed, sequential, relative=config.mde_relative)
    if p_adjusted is None or low is None or high is None:
        reason = fixed.reason or sequential.reason or "the test is undefined on this data"
        return Decision.KEEP_RUNNING, f"not enough data: {reason}"
    better = fixed.difference > 0 if config.primary.higher_is_better else fixed.difference < 0
    if p_adjusted < config.alpha:
        word = "better" if better else "worse"
        decision = Decision.TREATMENT_WINS if better else Decision.CONTROL_WINS
        return decision, f"treatment is {word}: adjusted p = {p_adjusted:.3g} < α = {config.alpha:g}"
    scale = "relative lift" if config.mde_relative else "difference"
    if -config.mde < low and high < config.mde:
        return Decision.NO_DIFFERENCE, f"the {scale} interval [{low:.4g}, {high:.4g}] lies within ±MDE {config.mde:g}"
    return (
        Decision.KEEP_RUNNING,
        f"adjusted p = {p_adjusted:.3g}; the {scale} interval [{low:.4g}, {high:.4g}] still spans ±MDE or 0",
    )


def _overall(comparisons: Sequence[ArmComparison], higher_is_better: bool) -> tuple[str, str, str | None]:
    winners = [c for c in comparisons if c.decision == Decision.TREATMENT_WINS]
    if winners:
        sign = 1 if higher_is_better else -1
        best = max(winners, key=lambda c: sign * c.fixed.difference)
        return Decision.TREATMENT_WINS, f"{best.arm}: {best.reason}", best.arm
    decisions = {c.decision for c in comparisons}
    if decisions <= {Decision.CONTROL_WINS, Decision.NO_DIFFERENCE} and Decision.CONTROL_WINS in decisions:
        reasons = "; ".join(f"{c.arm}: {c.reason}" for c in comparisons if c.decision == Decision.CONTROL_WINS)
        return Decision.CONTROL_WINS, reasons, None
    if decisions == {Decision.NO_DIFFERENCE}:
        return Decision.NO_DIFFERENCE, "; ".join(f"{c.arm}: {c.reason}" for c in comparisons), None
    pending = [c for c in comparisons if c.decision == Decision.KEEP_RUNNING]
    return Decision.KEEP_RUNNING, "; ".join(f"{c.arm}: {c.reason}" for c in pending), None


def readout(
    *,
    config: ABConfig,
    primary: Mapping[str, ArmStats],
    guardrails: Mapping[str, Mapping[str, ArmStats]] | None = None,
    assignments: Mapping[str, int] | None = None,
    previous: Mapping[str, Any] | None = None,
) -> Readout:
    """The full readout. `primary[arm]` and `guardrails[name][arm]` are sufficient statistics (a missing arm
    counts as empty); `assignments[arm]` the units assigned (default: the primary metric's n); `previous` the
    last readout's to_dict(), which the sequential p-values and intervals continue from."""
    unknown = set(primary) - set(config.arms)
    if unknown:
        raise ValueError(f"primary: unknown arms {', '.join(sorted(unknown))}")
    unknown = set(assignments or {}) - set(config.arms)
    if unknown:
        raise ValueError(f"assignments: unknown arms {', '.join(sorted(unknown))}")
    guardrails = guardrails or {}
    unknown = set(guardrails) - {g.name for g in config.guardrails}
    if unknown:
        raise ValueError(f"guardrails: unknown metrics {', '.join(sorted(unknown))}")
    empty = ArmStats(0, 0.0, 0.0)
    stats = {arm: primary.get(arm, empty) for arm in config.arms}
    counts = {arm: int((assignments or {}).get(arm, stats[arm].n)) for arm in config.arms}
    srm = srm_check(counts=[counts[arm] for arm in config.arms], split=config.split)
    planned = config.planned_per_arm()
    alpha = config.alpha_per_comparison
    control_name, kind = config.arms[0], config.primary.kind

    partial = []
    for arm in config.arms[1:]:
        fixed = compare(control=stats[control_name], treatment=stats[arm], kind=kind, alpha=alpha)
        sequential = sequential_compare(
            fixed=fixed,
            planned_variance=_planned_variance(
                stats[control_name], stats[arm], kind, (planned[control_name], planned[arm])
            ),
            alpha=alpha,
            previous=_previous_sequential(previous, arm),
        )
        if kind == RATE:
            bayesian = bayes.bayes_rates(
                control=stats[control_name], treatment=stats[arm], higher_is_better=config.primary.higher_is_better
            )
        else:
            bayesian = bayes.bayes_means(fixed=fixed, higher_is_better=config.primary.higher_is_better)
        guardrail_results = tuple(
            _guardrail(
                spec,
                config=config,
                control=guardrails.get(spec.name, {}).get(control_name),
                treatment=guardrails.get(spec.name, {}).get(arm),
                planned=(planned[control_name], planned[arm]),
                previous=_previous_sequential(previous, arm, spec.name),
            )
            for spec in config.guardrails
        )
        partial.append((arm, fixed, sequential, bayesian, guardrail_results))

    fixed_holm = holm([item[1].p_value for item in partial])
    sequential_holm = holm([item[2].p_value for item in partial])
    comparisons = []
    for (arm, fixed, sequential, bayesian, guardrail_results), p_fixed, p_seq in zip(
        partial, fixed_holm, sequential_holm, strict=True
    ):
        reached = stats[control_name].n >= planned[control_name] and stats[arm].n >= planned[arm]
        decision, reason = _arm_decision(
            config=config,
            fixed=fixed,
            sequential=sequential,
            p_adjusted=p_seq if config.sequential else p_fixed,
            guardrails=guardrail_results,
            reached_plan=reached,
        )
        comparisons.append(
            ArmComparison(arm, fixed, sequential, p_fixed, p_seq, bayesian, guardrail_results, decision, reason)
        )

    if srm.invalid:
        decision, reason, winner = Decision.INVALID, srm.reason, None
    else:
        decision, reason, winner = _overall(comparisons, config.primary.higher_is_better)
    arms = tuple(
        ArmSummary(arm, share, counts[arm], stats[arm].n, stats[arm].mean, math.ceil(planned[arm]))
        for arm, share in zip(config.arms, config.split, strict=True)
    )
    return Readout(
        decision=decision,
        reason=reason,
        winner=winner,
        analysis=SEQUENTIAL if config.sequential else FIXED_HORIZON,
        srm=srm,
        arms=arms,
        comparisons=tuple(comparisons),
        config=asdict(config),
    )
