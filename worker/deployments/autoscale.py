"""The local backend's autoscaler: replicas from the request rate, between a minimum and a maximum.

Kubernetes has its HorizontalPodAutoscaler (on CPU); on one machine the console decides itself, from the
prediction log: `ceil(requests per second / target per replica)`, clamped to [min, max]. A change waits for
the cooldown since the last one, so a burst does not make servers flap up and down; scaling up skips the
cooldown when the load is more than twice the capacity (waiting would only drop requests).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AutoscalePolicy:
    min_replicas: int
    max_replicas: int
    target_rps_per_replica: float = 50.0
    cooldown_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("autoscaling needs 1 <= min_replicas <= max_replicas")
        if self.target_rps_per_replica <= 0:
            raise ValueError("target_rps_per_replica must be positive")


@dataclass(frozen=True)
class AutoscaleDecision:
    replicas: int
    changed: bool
    reason: str
    request_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def autoscale_decide(
    *,
    policy: AutoscalePolicy,
    current_replicas: int,
    request_rate: float,
    seconds_since_last_change: float | None,
) -> AutoscaleDecision:
    wanted = math.ceil(max(request_rate, 0.0) / policy.target_rps_per_replica)
    wanted = min(policy.max_replicas, max(policy.min_replicas, wanted))
    rate = f"{request_rate:.1f} req/s at {policy.target_rps_per_replica:g} per replica"
    if wanted == current_replicas:
        return AutoscaleDecision(current_replicas, False, f"{rate}: {current_replicas} is right", request_rate)
    # Outside [min, max] (the bounds changed) is corrected at once.
    out_of_bounds = not policy.min_replicas <= current_replicas <= policy.max_replicas
    overloaded = request_rate > 2 * current_replicas * policy.target_rps_per_replica
    cooling = seconds_since_last_change is not None and seconds_since_last_change < policy.cooldown_seconds
    if cooling and not out_of_bounds and not (wanted > current_replicas and overloaded):
        return AutoscaleDecision(
            current_replicas,
            False,
            f"{rate} wants {wanted}, waiting for the cooldown ({seconds_since_last_change:.0f} of "
            f"{policy.cooldown_seconds:.0f} s)",
            request_rate,
        )
    return AutoscaleDecision(wanted, True, f"{rate}: {current_replicas} → {wanted}", request_rate)
