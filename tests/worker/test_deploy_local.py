"""The local-process backend with real model server processes on loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.serving.test_server_support import Bundle, rows, save_exploding, save_random_forest
from worker.deployments.local import LocalProcessBackend
from worker.deployments.probe import http_get_json
from worker.deployments.spec import BackendError, DeploymentSpec, ReplicaHealth, VersionSpec


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    directory = tmp_path_factory.mktemp("local-bundles")
    return {
        "a": save_random_forest(directory, "a", seed=0),
        "b": save_random_forest(directory, "b", seed=7),
        "exploding": save_exploding(directory),
    }


def version(version_id: int, bundle: Bundle, weight: int) -> VersionSpec:
    return VersionSpec(version_id, f"v{version_id}", bundle.path, bundle.sha256, weight)


@pytest.fixture
def backend(tmp_path: Path) -> LocalProcessBackend:
    backend = LocalProcessBackend(state_dir=tmp_path / "state", ready_timeout=60)
    yield backend
    for name in backend.names():
        backend.delete(name)


def predict(url: str, key: str | None = None) -> tuple[int, str | None]:
    import http.client
    from urllib.parse import urlparse

    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    headers = {"Content-Type": "application/json", **({"X-Request-Key": key} if key else {})}
    try:
        connection.request("POST", "/invocations", body=json.dumps({"dataframe_records": rows(1)}), headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Model-Version")
    finally:
        connection.close()


@dataclass
class Load:
    """What clients sending predictions in a loop saw: failures (statuses or errors) and the versions served."""

    failures: list[object] = field(default_factory=list)
    answered: list[str | None] = field(default_factory=list)


@contextmanager
def load_on(url: str, clients: int = 2) -> Iterator[Load]:
    """Clients predicting through `url` for as long as the block runs (at most 60 s), from 0.3 s before it
    to 0.3 s after it, so that the change the block makes happens under load."""
    load = Load()
    stop = threading.Event()

    def client() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, served = predict(url)
                load.answered.append(served)
                if status != 200:
                    load.failures.append(status)
            except OSError as exc:
                load.failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    try:
        yield load
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def test_apply_starts_replicas_on_free_ports_and_is_idempotent(backend: LocalProcessBackend, bundles: dict) -> None:
    spec = DeploymentSpec(deployment_id=1, name="iris", versions=(version(1, bundles["a"], 100),), replicas=2)
    observed = backend.apply(spec)
    assert observed.serves(spec)
    assert [r.health for r in observed.replicas] == [ReplicaHealth.READY, ReplicaHealth.READY]
    ports = {r.port for r in observed.replicas}
    assert len(ports) == 2
    assert all(r.address == "127.0.0.1" and r.pid for r in observed.replicas)
    assert predict(observed.replicas[0].url) == (200, "1")

    again = backend.apply(spec)
    assert [r.pid for r in again.replicas] == [r.pid for r in observed.replicas], "nothing restarts"
    # The spec file on disk is the model server's own format, with the host's artifact paths.
    server_spec = json.loads((backend.state_dir / "iris" / "spec.json").read_text())
    assert server_spec["versions"][0]["artifact_path"] == bundles["a"].path


def served_requests(replica_url: str) -> float:
    """Predictions one replica answered, from its own /metrics (every worker of the replica counts)."""
    import urllib.request

    with urllib.request.urlopen(f"{replica_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("model_server_requests_total{")
    )


def test_the_endpoint_balances_across_replicas_and_survives_a_dead_one(
    backend: LocalProcessBackend, bundles: dict
) -> None:
    spec = DeploymentSpec(deployment_id=9, name="balanced", versions=(version(1, bundles["a"], 100),), replicas=2)
    observed = backend.apply(spec)
    endpoint = observed.endpoint
    assert endpoint.startswith("http://127.0.0.1:")
    assert endpoint not in {r.url for r in observed.replicas}
    assert all(predict(endpoint) == (200, "1") for _ in range(200))
    counts = [served_requests(r.url) for r in observed.replicas]
    assert sum(counts) == 200
    assert min(counts) >= 40, f"the kernel spread 200 connections as {counts}"

    dead = observed.replicas[1]
    os.killpg(dead.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while backend.observe("balanced").replicas[1].health != ReplicaHealth.DEAD and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # its workers, killed with it, have closed their copies of the shared socket
    assert [predict(endpoint)[0] for _ in range(50)] == [200] * 50, "the survivor takes every request"

    repaired = backend.apply(spec)
    assert repaired.endpoint == endpoint, "the endpoint survives restarts"
    assert [r.health for r in repaired.replicas] == [ReplicaHealth.READY, ReplicaHealth.READY]
    before = served_requests(repaired.replicas[1].url)
    assert all(predict(endpoint) == (200, "1") for _ in range(200))
    assert served_requests(repaired.replicas[1].url) - before >= 40, "the restarted replica is back in the balance"


def test_a_killed_process_is_noticed_and_restarted_on_its_port(backend: LocalProcessBackend, bundles: dict) -> None:
    spec = DeploymentSpec(deployment_id=2, name="crashy", versions=(version(1, bundles["a"], 100),))
    first = backend.apply(spec).replicas[0]
    os.kill(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while backend.observe("crashy").replicas[0].health != ReplicaHealth.DEAD and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.observe("crashy").replicas[0].health == ReplicaHealth.DEAD

    restarted = backend.apply(spec).replicas[0]
    assert restarted.health == ReplicaHealth.READY
    assert restarted.pid != first.pid
    assert restarted.port == first.port, "the address survives the crash"


def test_processes_outlive_their_starter_and_are_adopted(tmp_path: Path, bundles: dict) -> None:
    """A worker process starts a server and exits; a new backend object (a restarted worker) finds it."""
    state = tmp_path / "state"
    spec = DeploymentSpec(deployment_id=3, name="adopted", versions=(version(1, bundles["a"], 100),))
    script = (
        "import json, sys; from worker.deployments.local import LocalProcessBackend;"
        "from worker.deployments.spec import DeploymentSpec;"
        f"b = LocalProcessBackend(state_dir={str(state)!r});"
        "print(b.apply(DeploymentSpec.from_dict(json.loads(sys.argv[1]))).replicas[0].pid)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec.to_dict())], cwd=root, capture_output=True, text=True, check=True
    )
    pid = int(result.stdout.strip().splitlines()[-1])
    backend = LocalProcessBackend(state_dir=state)
    try:
        observed = backend.observe("adopted")
        assert observed.replicas[0].pid == pid and observed.replicas[0].health == ReplicaHealth.READY
        assert backend.apply(spec).replicas[0].pid == pid, "adopted, not restarted"
    finally:
        backend.delete("adopted")
    assert not Path(f"/proc/{pid}").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()


def test_a_reused_pid_is_not_mistaken_for_a_server(backend: LocalProcessBackend, bundles: dict) -> None:
    spec = DeploymentSpec(deployment_id=4, name="reused", versions=(version(1, bundles["a"], 100),))
    backend.apply(spec)
    record_path = backend.state_dir / "reused" / "replica-0.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "pid": os.getpid()}))  # alive, but not a model server
    assert backend.observe("reused").replicas[0].health == ReplicaHealth.DEAD
    record_path.write_text(json.dumps(record))  # so that the fixture stops the real one


def test_spec_change_reloads_gracefully_without_failed_requests(backend: LocalProcessBackend, bundles: dict) -> None:
    blue = DeploymentSpec(deployment_id=5, name="bg", versions=(version(1, bundles["a"], 100),))
    replica = backend.apply(blue).replicas[0]
    green = DeploymentSpec(
        deployment_id=5, name="bg", versions=(version(1, bundles["a"], 0), version(2, bundles["b"], 100))
    )
    with load_on(replica.url) as load:
        after = backend.apply(green).replicas[0]
    assert after.pid == replica.pid, "the same master reloaded"
    assert after.traffic == {"1": 0, "2": 100}
    assert load.failures == []
    assert "1" in load.answered and load.answered[-1] == "2"


def test_a_spec_that_cannot_load_is_refused_and_the_old_one_keeps_serving(
    backend: LocalProcessBackend, bundles: dict
) -> None:
    good = DeploymentSpec(deployment_id=6, name="refuse", versions=(version(1, bundles["a"], 100),))
    replica = backend.apply(good).replicas[0]
    # A pickle bundle without trust_pickle: the master's check refuses it.
    bad = DeploymentSpec(deployment_id=6, name="refuse", versions=(version(9, bundles["exploding"], 100),))
    with pytest.raises(BackendError, match="refused the new spec"):
        backend.apply(bad)
    assert predict(replica.url) == (200, "1")


def test_scale_up_and_down_and_delete(backend: LocalProcessBackend, bundles: dict) -> None:
    spec = DeploymentSpec(deployment_id=7, name="scaled", versions=(version(1, bundles["a"], 100),))
    backend.apply(spec)
    assert len(backend.scale("scaled", 3).replicas) == 3
    down = backend.scale("scaled", 1)
    assert [r.replica for r in down.replicas] == ["scaled-0"]
    pid = down.replicas[0].pid
    backend.delete("scaled")
    assert backend.observe("scaled").replicas == ()
    assert not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
    with pytest.raises(BackendError):
        backend.scale("scaled", 2)


def test_observe_reads_what_the_server_says(backend: LocalProcessBackend, bundles: dict) -> None:
    spec = DeploymentSpec(
        deployment_id=8,
        name="shadowed",
        versions=(version(1, bundles["a"], 90), version(2, bundles["b"], 10)),
        shadow=version(3, bundles["b"], 0),
    )
    replica = backend.apply(spec).replicas[0]
    assert replica.traffic == {"1": 90, "2": 10} and replica.shadow == "3"
    status, metadata = http_get_json(replica.address, replica.port, "/v2/models/shadowed")
    assert status == 200 and metadata["parameters"]["deployment_id"] == 8
    # CPU time and memory of the server's whole process tree (its master and workers), as psutil reads them.
    tree = [psutil.Process(replica.pid), *psutil.Process(replica.pid).children(recursive=True)]
    assert len(tree) >= 2 and replica.cpu_seconds > 0
    assert replica.rss_bytes >= sum(process.memory_info().rss for process in tree) * 0.8


def children(pid: int) -> set[int]:
    """The processes whose parent is `pid`, read from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def served_versions(replica_url: str) -> list[str]:
    from urllib.parse import urlparse

    parsed = urlparse(replica_url)
    return http_get_json(parsed.hostname, parsed.port, "/v2/models/fallback")[1]["versions"]


def test_a_refused_reload_puts_the_served_spec_back_for_respawns_and_restarts(
    backend: LocalProcessBackend, bundles: dict
) -> None:
    good = DeploymentSpec(deployment_id=9, name="fallback", versions=(version(1, bundles["a"], 100),), workers=2)
    replica = backend.apply(good).replicas[0]
    folder = backend.state_dir / "fallback"
    served_spec, served_desired = (folder / "spec.json").read_text(), (folder / "desired.json").read_text()
    # A pickle bundle without trust_pickle: the master's check refuses it.
    bad = DeploymentSpec(deployment_id=9, name="fallback", versions=(version(9, bundles["exploding"], 100),), workers=2)
    with pytest.raises(BackendError, match="(?s)refused the new spec.*the previous spec was put back"):
        backend.apply(bad)
    assert (folder / "spec.json").read_text() == served_spec
    assert (folder / "desired.json").read_text() == served_desired

    # A worker dies: the master's replacement boots from the spec file, which is the served one.
    workers = children(replica.pid)
    assert len(workers) == 2
    os.kill(next(iter(workers)), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while len(children(replica.pid) - workers) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # the replacement loads its models
    assert backend.observe("fallback").replicas[0].pid == replica.pid, "the master is still up"
    assert all(predict(replica.url) == (200, "1") for _ in range(20))
    assert all(served_versions(replica.url) == ["1"] for _ in range(10))

    # The whole replica dies and is restarted (scale re-applies the last applied spec): it serves the old one.
    os.kill(replica.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while backend.observe("fallback").replicas[0].health != ReplicaHealth.DEAD and time.monotonic() < deadline:
        time.sleep(0.05)
    restarted = backend.scale("fallback", 1).replicas[0]
    assert restarted.pid != replica.pid and restarted.traffic == {"1": 100}
    assert predict(restarted.url) == (200, "1")


def kill_and_wait_dead(backend: LocalProcessBackend, name: str) -> None:
    pid = backend.observe(name).replicas[0].pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while backend.observe(name).replicas[0].health != ReplicaHealth.DEAD and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_crashing_replica_is_restarted_with_backoff_and_shows_its_crash_loop(tmp_path: Path, bundles: dict) -> None:
    backend = LocalProcessBackend(
        state_dir=tmp_path / "state", ready_timeout=60, restart_backoff=1, restart_backoff_max=2
    )
    spec = DeploymentSpec(deployment_id=10, name="loop", versions=(version(1, bundles["a"], 100),))
    try:
        backend.apply(spec)
        # The first crash is restarted at once.
        kill_and_wait_dead(backend, "loop")
        assert backend.apply(spec).replicas[0].restarts == 1
        # Each further crash waits longer: 1 s, then 2 s (the cap).
        for restarts, delay in [(1, 1), (2, 2), (3, 2)]:
            kill_and_wait_dead(backend, "loop")
            with pytest.raises(BackendError, match=f"replica 0 is in a crash loop \\({restarts} restarts\\)"):
                backend.apply(spec)
            dead = backend.observe("loop").replicas[0]
            assert dead.health == ReplicaHealth.DEAD and dead.crash_loop and dead.restarts == restarts
            assert dead.next_restart_at - time.time() == pytest.approx(delay, abs=0.5)
            assert backend.observe("loop").to_dict()["replicas"][0]["crash_loop"] is True
            with pytest.raises(BackendError, match="crash loop"):
                backend.apply(spec)  # not yet
            time.sleep(max(0.0, dead.next_restart_at - time.time()))
            back = backend.apply(spec).replicas[0]
            assert back.health == ReplicaHealth.READY and back.restarts == restarts + 1 and not back.crash_loop

        # A replica that had run for longer than the reset period before dying is restarted at once.
        record_path = backend.state_dir / "loop" / "replica-0.json"
        record = json.loads(record_path.read_text())
        record_path.write_text(json.dumps({**record, "started_at": record["started_at"] - 3600}))
        kill_and_wait_dead(backend, "loop")
        assert backend.apply(spec).replicas[0].restarts == 1
    finally:
        backend.delete("loop")


def test_restart_delays_double_from_10_seconds_to_5_minutes() -> None:
    from worker.deployments.local import restart_delay

    delays = [restart_delay(n, base=10, cap=300) for n in range(8)]
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]


def test_model_servers_get_only_the_environment_they_need(
    backend: LocalProcessBackend, bundles: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "SECRET_KEY": "console-secret",
        "DATABASE_URL": "postgres://u:p@db/console",
        "EMAIL_HOST_PASSWORD": "mail-secret",
        "AWS_SECRET_ACCESS_KEY": "s3-secret",
        "OMP_NUM_THREADS": "1",
        "TZ": "UTC",
    }.items():
        monkeypatch.setenv(name, value)
    old_umask = os.umask(0o022)
    try:
        spec = DeploymentSpec(
            deployment_id=11, name="envs", versions=(version(1, bundles["a"], 100),), token="ingest-secret"
        )
        replica = backend.apply(spec).replicas[0]
    finally:
        os.umask(old_umask)
    raw = Path(f"/proc/{replica.pid}/environ").read_bytes()
    environment = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    assert not {"SECRET_KEY", "DATABASE_URL", "EMAIL_HOST_PASSWORD", "AWS_SECRET_ACCESS_KEY"} & set(environment)
    assert environment["OMP_NUM_THREADS"] == "1" and environment["TZ"] == "UTC"
    assert environment["PATH"] == os.environ["PATH"]
    assert environment["PYTHONPATH"] == str(backend.serving_root)
    # The files holding the ingest token are the owner's only, whatever the umask.
    folder = backend.state_dir / "envs"
    assert "ingest-secret" in (folder / "spec.json").read_text()
    for name in ("spec.json", "desired.json"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    assert folder.stat().st_mode & 0o777 == 0o700
