"""The seed's monitoring helpers over the console's API:

    performance = check_model_performance(deployment, window="24h", accuracy_threshold=0.9)
    performance.versions[0].accuracy          # realised accuracy from the labels sent as feedback
    performance.alerts                        # ["v2: accuracy 0.850 < 0.900"]
    report = check_data_drift(deployment, window="24h")     # runs a drift report on the console and waits
    report.drift_score, report.dataset_drift

Performance comes from `GET /api/v1/deployments/{id}/performance/` (labels joined with logged predictions, and
a label-free CBPE estimate); drift from `POST /api/v1/drift-reports/` (the console's drift job: PSI, KS and
chi-square per column against the deployment's reference).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mlops_sdk.client import Client
from mlops_sdk.errors import Timeout
from mlops_sdk.types import Deployment, DriftReport, Performance, VersionPerformance

DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_DRIFT_TIMEOUT = 600.0


@dataclass
class PerformanceCheck(Performance):
    """A performance window, with the alerts raised against the threshold given."""

    alerts: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        """The accuracy of the live (non-shadow) version with the most labelled predictions."""
        live = [version for version in self.versions if not version.shadow and version.accuracy is not None]
        return max(live, key=lambda version: version.labelled).accuracy if live else None


def _deployment_id(deployment: Deployment | int) -> int:
    return deployment if isinstance(deployment, int) else deployment.id


def check_model_performance(
    deployment: Deployment | int,
    *,
    window: str = "24h",
    accuracy_threshold: float | None = None,
    client: Client | None = None,
) -> PerformanceCheck:
    """Realised metrics per model version over `window` (1h … 90d); an alert per version whose accuracy is
    under `accuracy_threshold`."""
    client = Client.default(client)
    data = client.get(f"/deployments/{_deployment_id(deployment)}/performance/", window=window)
    performance = Performance.from_api(data)
    check = PerformanceCheck(
        raw=performance.raw,
        deployment_id=performance.deployment_id,
        since=performance.since,
        until=performance.until,
        versions=performance.versions,
    )
    if accuracy_threshold is not None:
        check.alerts = [
            f"version {_label(version)}: accuracy {version.accuracy:.3f} < {accuracy_threshold:.3f}"
            for version in check.versions
            if version.accuracy is not None and version.accuracy < accuracy_threshold
        ]
    return check


def _label(version: VersionPerformance) -> str:
    return f"id {version.model_version_id}" + (" (shadow)" if version.shadow else "")


def check_data_drift(
    deployment: Deployment | int,
    *,
    window: str = "24h",
    wait: bool = True,
    timeout: float = DEFAULT_DRIFT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    client: Client | None = None,
) -> DriftReport:
    """Run a drift report over the deployment's last `window` of traffic; with `wait`, return it finished
    (`drift_score` is the share of drifted columns, `dataset_drift` the console's verdict)."""
    client = Client.default(client)
    report = DriftReport.from_api(
        client.post("/drift-reports/", {"deployment": _deployment_id(deployment), "window": window})
    )
    if not wait:
        return report
    deadline = time.monotonic() + timeout
    while True:
        report = DriftReport.from_api(client.get(f"/drift-reports/{report.id}/"))
        if report.finished:
            return report
        if time.monotonic() > deadline:
            raise Timeout(f"drift report {report.id} is still {report.status} after {timeout:.0f} s")
        time.sleep(poll_interval)


def drift_reports(deployment: Deployment | int, *, client: Client | None = None) -> list[DriftReport]:
    """Every drift report of the deployment, newest first."""
    client = Client.default(client)
    return [
        DriftReport.from_api(data)
        for data in client.paginate("/drift-reports/", {"deployment": _deployment_id(deployment)})
    ]


class MonitoringSystem:
    """The seed's class shape, around the functions above and one shared client."""

    def __init__(self, *, accuracy_threshold: float | None = None, client: Client | None = None) -> None:
        self.client = Client.default(client)
        self.accuracy_threshold = accuracy_threshold

    def check_model_performance(self, deployment: Deployment | int, *, window: str = "24h") -> PerformanceCheck:
        return check_model_performance(
            deployment, window=window, accuracy_threshold=self.accuracy_threshold, client=self.client
        )

    def check_data_drift(self, deployment: Deployment | int, *, window: str = "24h") -> DriftReport:
        return check_data_drift(deployment, window=window, client=self.client)
