"""A/B tests of model versions, as in the seed's quick start (the console's `/api/v1/abtests/`, docs/abtests.md):

    ab_test = ABTest(
        control_model="iris-classifier:1",
        treatment_model="iris-classifier:2",
        traffic_split=0.5,
        success_metric="accuracy",
    )
    results = ab_test.run(duration_days=7)    # creates and starts the test; the first readout
    ...                                       # traffic, labels or outcomes arrive
    results = ab_test.results()               # a readout computed now
    if results.is_significant():
        ab_test.promote_winner()              # a promotion request to production, the readout attached
    ab_test.stop()                            # the decision recorded, all traffic to the winner (or the control)

The test runs on the deployment serving the control version (or `deployment=`, a name or id). The console
computes every statistic; this class only reads the readout it answers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from mlops_sdk.client import Client
from mlops_sdk.errors import NotFound, ValidationError
from mlops_sdk.registry import ModelRegistry
from mlops_sdk.types import Deployment, ModelVersion, PromotionRequest, Resource, parse_time

RATE_METRICS = ("accuracy", "conversion")
MEAN_METRICS = ("mae", "value")
# The seed gives no effect size: two points of a rate is a change a model comparison usually cares about.
DEFAULT_RATE_MDE = 0.02
TREATMENT_WINS = "treatment wins"
CONTROL_WINS = "control wins"
SEQUENTIAL = "sequential"


@dataclasses.dataclass
class ABTestRecord(Resource):
    """The console's A/B test: its arms (control first), plan, status and, once stopped, decision and winner."""

    id: int = 0
    project: str = ""
    deployment: int = 0
    name: str = ""
    description: str = ""
    status: str = ""
    arms: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    primary_metric: str = ""
    guardrails: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    mde: float = 0.0
    mde_relative: bool = False
    alpha: float = 0.05
    power: float = 0.8
    baseline: float | None = None
    baseline_sd: float | None = None
    sequential: bool = True
    planned_sample_size: int = 0
    planned_duration_days: float | None = None
    assignment_key: str = ""
    decision: str = ""
    decision_reason: str = ""
    winner: int | None = None
    promotion_request: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None


@dataclasses.dataclass
class ABTestResults(Resource):
    """One readout: the decision, the SRM check and, per treatment, the comparison with control (`result`
    holds the engine's whole answer, see docs/abtests.md "Readouts")."""

    id: int = 0
    as_of: datetime | None = None
    decision: str = ""
    reason: str = ""
    srm_p_value: float | None = None
    srm_invalid: bool = False
    result: dict[str, Any] = dataclasses.field(default_factory=dict)
    computed_at: datetime | None = None

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> ABTestResults:
        results = super().from_api(data)
        results.as_of = parse_time(data.get("as_of"))
        return results

    @property
    def engine(self) -> dict[str, Any]:
        return self.result.get("engine") or {}

    @property
    def analysis(self) -> str:
        """ "sequential" (always-valid p-values, confidence sequences) or "fixed horizon": the one that decides."""
        return self.engine.get("analysis", "")

    @property
    def alpha(self) -> float:
        return float((self.engine.get("config") or {}).get("alpha", 0.05))

    @property
    def arms(self) -> list[dict[str, Any]]:
        """Per arm, control first: model_version, label, assigned, n, mean, requests, error_rate, p50/p99."""
        return list(self.result.get("arms") or [])

    @property
    def winner_version(self) -> int | None:
        """The model version id of the winning treatment, if one won."""
        return self.result.get("winner_version")

    @property
    def treatment_wins(self) -> bool:
        return self.decision == TREATMENT_WINS

    def comparison(self, arm: str | None = None) -> dict[str, Any]:
        """The comparison of one treatment (its label, e.g. "v2") with control; by default the winner's, else
        the first treatment's."""
        comparisons = self.engine.get("comparisons") or []
        wanted = arm or self.engine.get("winner")
        for comparison in comparisons:
            if comparison.get("arm") == wanted:
                return comparison
        if arm is not None:
            raise KeyError(f"no treatment arm {arm!r}; arms: {', '.join(c.get('arm', '') for c in comparisons)}")
        return comparisons[0] if comparisons else {}

    def p_value(self, arm: str | None = None) -> float | None:
        """The Holm-adjusted p-value of the analysis that decides (sequential: always valid)."""
        comparison = self.comparison(arm)
        key = "sequential_p_value_holm" if self.analysis == SEQUENTIAL else "p_value_holm"
        return comparison.get(key)

    def is_significant(self, arm: str | None = None) -> bool:
        """True when the deciding analysis finds a difference at level α (Holm-adjusted) and the sample ratio is
        sound. A significant difference can still lose to a guardrail: read `decision` before promoting."""
        p = self.p_value(arm)
        return not self.srm_invalid and p is not None and p < self.alpha

    @property
    def difference(self) -> float | None:
        """Treatment minus control, in the metric's units (winner's or first treatment's)."""
        return (self.comparison().get("fixed") or {}).get("difference")

    @property
    def lift(self) -> float | None:
        """The relative lift, (treatment - control) / control."""
        return (self.comparison().get("fixed") or {}).get("lift")

    @property
    def interval(self) -> tuple[float | None, float | None]:
        """The interval of the difference from the deciding analysis: the confidence sequence (sequential) or
        the confidence interval (fixed horizon)."""
        return self._interval(("cs_low", "cs_high"), ("ci_low", "ci_high"))

    @property
    def lift_interval(self) -> tuple[float | None, float | None]:
        """The same for the relative lift (delta method)."""
        return self._interval(("lift_cs_low", "lift_cs_high"), ("lift_ci_low", "lift_ci_high"))

    def _interval(self, sequential: tuple[str, str], fixed: tuple[str, str]) -> tuple[float | None, float | None]:
        comparison = self.comparison()
        part, keys = ("sequential", sequential) if self.analysis == SEQUENTIAL else ("fixed", fixed)
        values = comparison.get(part) or {}
        return values.get(keys[0]), values.get(keys[1])

    @property
    def prob_treatment_better(self) -> float | None:
        """The Bayesian probability that the treatment beats control (shown beside the frequentist readout)."""
        return (self.comparison().get("bayesian") or {}).get("prob_treatment_better")

    def summary(self) -> str:
        low, high = self.interval
        interval = f"[{low:+.4g}, {high:+.4g}]" if low is not None and high is not None else "n/a"
        srm = " SAMPLE RATIO MISMATCH" if self.srm_invalid else ""
        difference = "n/a" if self.difference is None else f"{self.difference:+.4g}"
        return f"{self.decision}: difference {difference}, {self.analysis or 'no'} interval {interval}{srm}"


class ABTest:
    """An A/B test of model versions of one model on one deployment."""

    def __init__(
        self,
        control_model: str | int | ModelVersion,
        treatment_model: str | int | ModelVersion | Sequence[str | int | ModelVersion],
        traffic_split: float | Sequence[int] = 0.5,
        success_metric: str = "accuracy",
        *,
        deployment: str | int | None = None,
        name: str | None = None,
        description: str = "",
        mde: float | None = None,
        mde_relative: bool = False,
        baseline: float | None = None,
        baseline_sd: float | None = None,
        alpha: float = 0.05,
        power: float = 0.8,
        sequential: bool = True,
        guardrails: list[dict[str, Any]] | None = None,
        assignment_key: str = "header",
        project: str | None = None,
        client: Client | None = None,
    ) -> None:
        if success_metric not in RATE_METRICS + MEAN_METRICS:
            raise ValueError(f"success_metric: choose from {', '.join(RATE_METRICS + MEAN_METRICS)}")
        self.client = client or Client(project=project)
        self.project = project or self.client.project
        self.registry = ModelRegistry(self.project, client=self.client)
        self.control_model = control_model
        many = isinstance(treatment_model, list | tuple)
        self.treatment_models = list(treatment_model) if many else [treatment_model]
        self.split = _split(traffic_split, len(self.treatment_models))
        self.success_metric = success_metric
        self.deployment_ref = deployment
        self.name = name
        self.description = description
        self.mde = mde
        self.mde_relative = mde_relative
        self.baseline = baseline
        self.baseline_sd = baseline_sd
        self.alpha = alpha
        self.power = power
        self.sequential = sequential
        self.guardrails = guardrails if guardrails is not None else [{"metric": "error_rate", "margin": 0.01}]
        self.assignment_key = assignment_key
        self.test: ABTestRecord | None = None

    @classmethod
    def get(cls, test_id: int, *, client: Client | None = None) -> ABTest:
        """An existing test by id (to read, stop or promote it from another session)."""
        client = Client.default(client)
        record = ABTestRecord.from_api(client.get(f"/abtests/{test_id}/"))
        arms = [arm["model_version"] for arm in record.arms]
        ab_test = cls(
            arms[0],
            arms[1:],
            [arm["weight"] for arm in record.arms],
            record.primary_metric,
            deployment=record.deployment,
            project=record.project,
            client=client,
        )
        ab_test.test = record
        return ab_test

    # Setting up

    def versions(self) -> tuple[ModelVersion, list[ModelVersion]]:
        """The control and treatment versions, resolved through the registry (`name:3`, `name@alias`, ids)."""
        if not isinstance(self.control_model, ModelVersion):
            self.control_model = self.registry.resolve(self.control_model)
        self.treatment_models = [
            model if isinstance(model, ModelVersion) else self.registry.resolve(model)
            for model in self.treatment_models
        ]
        return self.control_model, self.treatment_models

    def find_deployment(self) -> Deployment:
        """`deployment=` (an id or a name), else the project's one deployment whose traffic includes the control."""
        ref = self.deployment_ref
        if isinstance(ref, int):
            return Deployment.from_api(self.client.get(f"/deployments/{ref}/"))
        params = {"project": self.client.require_project(self.project)}
        deployments = [Deployment.from_api(data) for data in self.client.paginate("/deployments/", params)]
        if ref is not None:
            for deployment in deployments:
                if deployment.name == ref:
                    return deployment
            raise NotFound(404, {"deployment": [f"No deployment named {ref!r} in project {self.project}."]})
        control, _ = self.versions()
        serving = [
            d
            for d in deployments
            if any(entry.get("model_version") == control.id and entry.get("weight") for entry in d.traffic)
        ]
        if not serving:
            raise NotFound(404, {"deployment": [f"No deployment serves {control}: deploy it, or pass deployment=."]})
        if len(serving) > 1:
            names = ", ".join(d.name for d in serving)
            raise ValidationError(400, {"deployment": [f"{control} is served by {names}: pass deployment=."]})
        return serving[0]

    def _baseline(self, control: ModelVersion) -> float:
        """The control's expected rate or mean for the power calculation: `baseline=`, else the control's
        recorded metric, kept inside (0, 1 - 2·MDE) for a rate so that the plan is defined."""
        if self.baseline is not None:
            return self.baseline
        recorded = (control.metrics or {}).get(self.success_metric)
        if not isinstance(recorded, int | float) or not math.isfinite(recorded):
            raise ValidationError(
                400, {"baseline": [f"{control} has no recorded {self.success_metric}: pass baseline=."]}
            )
        if self.success_metric in RATE_METRICS:
            return min(max(float(recorded), 0.01), 1 - 2 * self._mde())
        return float(recorded)

    def _mde(self) -> float:
        if self.mde is not None:
            return self.mde
        if self.success_metric in MEAN_METRICS:
            raise ValidationError(400, {"mde": [f"a {self.success_metric} test needs mde= in the metric's units."]})
        return DEFAULT_RATE_MDE

    def run(self, duration_days: float | None = 7, *, expected_generation: int | None = None) -> ABTestResults:
        """Create the test and start it (the deployment's split becomes the arms' weights); returns the first
        readout. The planned sample is what the deployment's traffic of the last week delivers in
        `duration_days` (the power calculation's sample when there is no traffic yet, or `duration_days=None`)."""
        control, treatments = self.versions()
        deployment = self.find_deployment()
        body: dict[str, Any] = {
            "deployment": deployment.id,
            "name": self.name or f"{control} vs {', '.join(str(t) for t in treatments)}",
            "description": self.description,
            "control": control.id,
            "treatments": [treatment.id for treatment in treatments],
            "split": self.split,
            "primary_metric": self.success_metric,
            "mde": self._mde(),
            "mde_relative": self.mde_relative,
            "baseline": self._baseline(control),
            "baseline_sd": self.baseline_sd,
            "alpha": self.alpha,
            "power": self.power,
            "sequential": self.sequential,
            "guardrails": self.guardrails,
            "assignment_key": self.assignment_key,
        }
        if duration_days is not None:
            if not math.isfinite(duration_days) or duration_days <= 0:
                raise ValueError("duration_days must be above 0")
            plan = self.plan(deployment)
            if plan.get("traffic_per_day"):
                body["planned_sample_size"] = max(2, math.ceil(plan["traffic_per_day"] * duration_days))
        self.test = ABTestRecord.from_api(self.client.post("/abtests/", body))
        started = self.client.post(f"/abtests/{self.test.id}/start/", {"expected_generation": expected_generation})
        self.test = ABTestRecord.from_api(started)
        return self.results()

    def plan(self, deployment: Deployment | None = None) -> dict[str, Any]:
        """The power calculation: units per arm, the total, the expected days and the deployment's traffic."""
        control, _ = self.versions()
        deployment = deployment or self.find_deployment()
        body = {
            "deployment": deployment.id,
            "primary_metric": self.success_metric,
            "baseline": self._baseline(control),
            "mde": self._mde(),
            "mde_relative": self.mde_relative,
            "baseline_sd": self.baseline_sd,
            "alpha": self.alpha,
            "power": self.power,
            "sequential": self.sequential,
            "split": self.split,
        }
        return self.client.post("/abtests/power/", body)

    # While it runs

    def _id(self) -> int:
        if self.test is None:
            raise NotFound(404, {"detail": "This A/B test has not been created yet: call run() first."})
        return self.test.id

    def refresh(self) -> ABTestRecord:
        self.test = ABTestRecord.from_api(self.client.get(f"/abtests/{self._id()}/"))
        return self.test

    def results(self, *, compute: bool = True) -> ABTestResults:
        """A readout computed now (editors), or with `compute=False` the latest one (beat computes one hourly)."""
        path = f"/abtests/{self._id()}/readout/"
        return ABTestResults.from_api(self.client.post(path) if compute else self.client.get(path))

    def history(self) -> list[ABTestResults]:
        """Every readout, oldest first (the cumulative difference over time)."""
        return [ABTestResults.from_api(data) for data in self.client.paginate(f"/abtests/{self._id()}/readouts/")]

    def record_outcomes(self, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        """Business outcomes for a `conversion` or `value` test: `{"assignment_key" | "request_id", "conversion" |
        "value"}` items. The answer counts them: stored, replaced, unchanged, unknown (and their ids), errors."""
        return self.client.post(f"/abtests/{self._id()}/outcomes/", outcomes)

    # Ending it

    def stop(self, *, winner: str | int | ModelVersion | None = None, reason: str = "") -> ABTestRecord:
        """The final readout, the decision recorded, all traffic to the winner: the readout's, else the control,
        or `winner` (one of the arms' versions) chosen by hand."""
        body: dict[str, Any] = {"reason": reason}
        if winner is not None:
            body["winner"] = (winner if isinstance(winner, ModelVersion) else self.registry.resolve(winner)).id
        self.test = ABTestRecord.from_api(self.client.post(f"/abtests/{self._id()}/stop/", body))
        return self.test

    def promote_winner(self, comment: str = "") -> PromotionRequest:
        """Open a promotion request to production for the winning treatment, the readout in its comment; the
        project's approvers decide (four eyes). A test with no winning treatment answers 409 (`Conflict`)."""
        opened = self.client.post(f"/abtests/{self._id()}/promote/", {"comment": comment})
        return PromotionRequest.from_api(self.client.get(f"/promotion-requests/{opened['promotion_request']}/"))


def _split(traffic_split: float | Sequence[int], treatments: int) -> list[int]:
    """Percent per arm, control first: a share in (0, 1) goes to the treatments, evenly; a list is taken as is
    (the console checks it sums to 100)."""
    if isinstance(traffic_split, list | tuple):
        return list(traffic_split)
    if isinstance(traffic_split, bool) or not 0 < traffic_split < 1:
        raise ValueError("traffic_split: the treatments' share of traffic, between 0 and 1 (exclusive)")
    each = round(traffic_split * 100 / treatments)
    return [100 - each * treatments, *([each] * treatments)]
