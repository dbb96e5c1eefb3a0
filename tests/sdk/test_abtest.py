"""The SDK's ABTest against a real local HTTP server that answers per route what each test scripts: what `run`
sends (split, metric, baseline, planned sample from the traffic), how it finds the deployment, the API's field
errors, and how it reads a readout the console's own engine (worker/abtests) computed."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import pytest

from mlops_sdk import ABTest, Client, Conflict, NotFound, ValidationError
from worker.abtests.readout import ABConfig, MetricSpec, readout
from worker.abtests.stats import ArmStats

CONTROL = {"id": 11, "model": 3, "model_name": "iris-classifier", "number": 1, "metrics": {"accuracy": 0.99}}
TREATMENT = {"id": 12, "model": 3, "model_name": "iris-classifier", "number": 2, "metrics": {"accuracy": 0.97}}


def deployment(pk: int, name: str, versions: list[int]) -> dict[str, Any]:
    traffic = [{"model_version": v, "weight": 100 // len(versions), "shadow": False} for v in versions]
    return {"id": pk, "name": name, "generation": 4, "traffic": traffic}


def record(status: str = "running", **extra: Any) -> dict[str, Any]:
    arms = [{"model_version": 11, "version": 1, "weight": 50}, {"model_version": 12, "version": 2, "weight": 50}]
    return {"id": 5, "project": "demo", "deployment": 7, "status": status, "arms": arms, "primary_metric": "accuracy"}


def engine_readout(
    control: tuple[int, int], treatment: tuple[int, int], *, sequential: bool = True, assigned: Any = None
) -> Any:
    """A readout computed by the console's engine on rates (successes, units) per arm, in the API's shape."""
    # A rate's sufficient statistics: units, successes, and the sum of squares (equal to successes for 0/1).
    stats = {arm: ArmStats(n, float(k), float(k)) for arm, (k, n) in (("v1", control), ("v2", treatment))}
    config = ABConfig(
        arms=("v1", "v2"),
        split=(50, 50),
        primary=MetricSpec("accuracy", "rate"),
        mde=0.02,
        planned_total=max(2, control[1] + treatment[1]),
        sequential=sequential,
    )
    counts = assigned or {"v1": control[1], "v2": treatment[1]}
    engine = json.loads(json.dumps(readout(config=config, primary=stats, assignments=counts).to_dict()))
    return {
        "id": 9,
        "as_of": "2026-12-05T07:00:00Z",
        "decision": engine["decision"],
        "reason": engine["reason"],
        "srm_p_value": engine["srm"]["p_value"],
        "srm_invalid": engine["srm"]["invalid"],
        "result": {
            "engine": engine,
            "arms": [{"model_version": 11, "label": "v1"}, {"model_version": 12, "label": "v2"}],
            "winner_version": 12 if engine["winner"] == "v2" else None,
        },
        "computed_at": "2026-12-05T07:00:01Z",
    }


class Console:
    """Answers per (method, path); records every request with its decoded JSON body."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []

    def on(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.routes[(method, "/api/v1" + path)] = (status, body)

    def sent(self, method: str, path: str) -> list[Any]:
        return [body for m, p, body in self.requests if (m, p) == (method, "/api/v1" + path)]


@pytest.fixture
def console() -> Iterator[tuple[Client, Console]]:
    script = Console()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            path = urlparse(self.path).path
            script.requests.append((self.command, path, json.loads(raw) if raw else None))
            status, body = script.routes.get((self.command, path), (404, {"detail": f"no route {path}"}))
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _handle  # noqa: N815 (http.server's naming)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = Client(f"http://127.0.0.1:{httpd.server_address[1]}", token="mlc_test", project="demo", retries=0)
    script.on("GET", "/model-versions/11/", CONTROL)
    script.on("GET", "/model-versions/12/", TREATMENT)
    yield client, script
    httpd.shutdown()
    httpd.server_close()


def test_run_creates_and_starts_the_test_on_the_deployment_serving_the_control(console: Any) -> None:
    client, script = console
    script.on("GET", "/deployments/", {"count": 2, "next": None, "results": [
        deployment(6, "other", [12]), deployment(7, "iris-classifier", [11])
    ]})  # fmt: skip
    script.on("POST", "/abtests/power/", {"total": 5000, "per_arm": [2500, 2500], "traffic_per_day": 1234.5})
    script.on("POST", "/abtests/", record("draft"), 201)
    script.on("POST", "/abtests/5/start/", record("running"))
    script.on("POST", "/abtests/5/readout/", engine_readout((0, 0), (0, 0)), 201)

    ab_test = ABTest(control_model=11, treatment_model=12, traffic_split=0.5, success_metric="accuracy", client=client)
    results = ab_test.run(duration_days=7)

    [created] = script.sent("POST", "/abtests/")
    assert created["deployment"] == 7 and created["control"] == 11 and created["treatments"] == [12]
    assert created["split"] == [50, 50] and created["primary_metric"] == "accuracy"
    # The plan: a week of the deployment's traffic; the baseline is the control's recorded accuracy, kept below
    # 1 - 2·MDE so that the power calculation is defined.
    assert created["planned_sample_size"] == math.ceil(1234.5 * 7)
    assert created["mde"] == 0.02 and created["baseline"] == pytest.approx(0.96)
    assert created["guardrails"] == [{"metric": "error_rate", "margin": 0.01}]
    assert script.sent("POST", "/abtests/5/start/") == [{"expected_generation": None}]
    assert ab_test.test.status == "running" and ab_test.test.arms[1]["model_version"] == 12
    assert results.decision == "keep running" and not results.is_significant()


def test_without_traffic_the_power_calculation_plans_the_sample(console: Any) -> None:
    client, script = console
    script.on("POST", "/abtests/power/", {"total": 5000, "traffic_per_day": None})
    script.on("POST", "/abtests/", record("draft"), 201)
    script.on("POST", "/abtests/5/start/", record("running"))
    script.on("POST", "/abtests/5/readout/", engine_readout((0, 0), (0, 0)), 201)
    script.on("GET", "/deployments/3/", deployment(3, "iris-classifier", [11]))

    ABTest(11, [12], [30, 70], "conversion", deployment=3, baseline=0.1, mde=0.01, client=client).run()

    [created] = script.sent("POST", "/abtests/")
    assert "planned_sample_size" not in created and created["split"] == [30, 70] and created["deployment"] == 3
    assert (created["baseline"], created["mde"]) == (0.1, 0.01)


def test_the_deployment_must_be_found_and_unambiguous(console: Any) -> None:
    client, script = console
    ab_test = ABTest(11, 12, client=client)
    script.on("GET", "/deployments/", {"count": 1, "next": None, "results": [deployment(6, "other", [12])]})
    with pytest.raises(NotFound) as missing:
        ab_test.run()
    assert "No deployment serves iris-classifier:1" in missing.value.fields["deployment"][0]
    script.on("GET", "/deployments/", {"count": 2, "next": None, "results": [
        deployment(6, "a", [11]), deployment(7, "b", [11, 12])
    ]})  # fmt: skip
    with pytest.raises(ValidationError) as ambiguous:
        ab_test.run()
    assert ambiguous.value.fields == {"deployment": ["iris-classifier:1 is served by a, b: pass deployment=."]}
    with pytest.raises(NotFound) as named:
        ABTest(11, 12, deployment="nope", client=client).run()
    assert "No deployment named 'nope'" in named.value.fields["deployment"][0]
    assert script.sent("POST", "/abtests/") == []


def test_the_consoles_field_errors_reach_the_caller(console: Any) -> None:
    client, script = console
    script.on("GET", "/deployments/7/", deployment(7, "iris-classifier", [11]))
    script.on("POST", "/abtests/power/", {"total": 10, "traffic_per_day": None})
    script.on("POST", "/abtests/", {"split": ["the percentages must sum to 100, not 90"]}, 400)
    with pytest.raises(ValidationError) as refused:
        ABTest(11, 12, [40, 50], deployment=7, client=client).run()
    assert refused.value.fields == {"split": ["the percentages must sum to 100, not 90"]}
    assert "split: the percentages must sum to 100, not 90" in str(refused.value)
    # A mean metric has no default effect size, and a version without the metric no default baseline.
    with pytest.raises(ValidationError) as no_mde:
        ABTest(11, 12, success_metric="value", baseline=10, deployment=7, client=client).run()
    assert "mde" in no_mde.value.fields
    with pytest.raises(ValidationError) as no_baseline:
        ABTest(11, 12, success_metric="conversion", deployment=7, client=client).run()
    assert no_baseline.value.fields["baseline"] == ["iris-classifier:1 has no recorded conversion: pass baseline=."]


def test_the_split_arguments() -> None:
    from mlops_sdk.abtest import _split

    assert _split(0.5, 1) == [50, 50]
    assert _split(0.1, 1) == [90, 10]
    assert _split(0.6, 2) == [40, 30, 30]
    for wrong in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="traffic_split"):
            _split(wrong, 1)
    with pytest.raises(ValueError, match="success_metric"):
        ABTest(11, 12, success_metric="f1", client=Client("http://x", token="t"))


def test_a_winning_readout_is_read_as_the_engine_computed_it(console: Any) -> None:
    client, script = console
    script.on("GET", "/abtests/5/", record())
    script.on("POST", "/abtests/5/readout/", engine_readout((800, 1000), (900, 1000)), 201)

    results = ABTest.get(5, client=client).results()

    engine = results.result["engine"]
    [comparison] = engine["comparisons"]
    assert results.decision == "treatment wins" and results.treatment_wins and results.winner_version == 12
    assert results.analysis == "sequential" and results.is_significant()
    assert results.p_value() == comparison["sequential_p_value_holm"] < 0.05
    assert results.difference == pytest.approx(0.9 - 0.8) and results.lift == pytest.approx(0.1 / 0.8)
    assert results.interval == (comparison["sequential"]["cs_low"], comparison["sequential"]["cs_high"])
    assert results.interval[0] > 0 and results.lift_interval[0] > 0
    assert results.prob_treatment_better > 0.99 and results.srm_invalid is False
    assert results.as_of.year == 2026 and "treatment wins" in results.summary()


def test_a_fixed_horizon_readout_uses_the_confidence_interval(console: Any) -> None:
    client, script = console
    script.on("GET", "/abtests/5/", record())
    script.on("GET", "/abtests/5/readout/", engine_readout((800, 1000), (810, 1000), sequential=False))
    results = ABTest.get(5, client=client).results(compute=False)
    comparison = results.comparison("v2")
    assert results.analysis == "fixed horizon" and not results.is_significant()
    assert results.p_value() == comparison["p_value_holm"] > 0.05
    assert results.interval == (comparison["fixed"]["ci_low"], comparison["fixed"]["ci_high"])
    with pytest.raises(KeyError, match="no treatment arm 'v3'"):
        results.comparison("v3")


def test_a_sample_ratio_mismatch_is_never_significant(console: Any) -> None:
    client, script = console
    script.on("GET", "/abtests/5/", record())
    skewed = engine_readout((800, 1000), (900, 1000), assigned={"v1": 900, "v2": 1100})
    script.on("GET", "/abtests/5/readout/", skewed)
    results = ABTest.get(5, client=client).results(compute=False)
    assert results.srm_invalid and results.srm_p_value < 0.001 and results.decision == "invalid"
    assert not results.is_significant() and "SAMPLE RATIO MISMATCH" in results.summary()


def test_stop_and_promote_the_winner(console: Any) -> None:
    client, script = console
    script.on("GET", "/abtests/5/", record())
    script.on("POST", "/abtests/5/stop/", {**record("stopped"), "decision": "treatment wins", "winner": 12})
    script.on("POST", "/abtests/5/promote/", {"promotion_request": 31, "status": "open"}, 201)
    script.on("GET", "/promotion-requests/31/", {"id": 31, "version": 12, "target_stage": "production"})
    ab_test = ABTest.get(5, client=client)

    stopped = ab_test.stop(winner=12, reason="by hand")
    promotion = ab_test.promote_winner(comment="ship it")

    assert script.sent("POST", "/abtests/5/stop/") == [{"reason": "by hand", "winner": 12}]
    assert stopped.status == "stopped" and stopped.winner == 12
    assert script.sent("POST", "/abtests/5/promote/") == [{"comment": "ship it"}]
    assert (promotion.id, promotion.version, promotion.target_stage) == (31, 12, "production")
    script.on("POST", "/abtests/5/promote/", {"detail": "A/B test t has no treatment that won to promote"}, 409)
    with pytest.raises(Conflict, match="no treatment that won"):
        ab_test.promote_winner()


def test_a_test_not_created_yet_says_so() -> None:
    ab_test = ABTest(11, 12, client=Client("http://127.0.0.1:9", token="t"))
    with pytest.raises(NotFound, match="call run"):
        ab_test.results()
