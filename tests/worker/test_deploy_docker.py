"""The Docker backend against a real docker engine (started by the session; see test_deploy_support.py).

The build context is checked on its own first (no engine needed); then an image is built with
`serving/Dockerfile` from the offline base image, containers run on the host network, answer predictions,
are replaced on a spec change and restarted after a crash. Without dockerd these tests are skipped (under CI they fail).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from tests.serving.test_server_support import Bundle, save_random_forest
from tests.worker.test_deploy_local import load_on, predict, served_requests, version
from tests.worker.test_deploy_support import docker_client, ensure_base_image  # noqa: F401 (a fixture, used by name)
from worker.deployments.docker_backend import (
    LABEL_DEPLOYMENT,
    PIDS_LIMIT,
    DockerBackend,
    build_context,
    container_spec,
    container_usage,
    image_tag,
    limits,
    spec_archive,
)
from worker.deployments.local import REPO_ROOT
from worker.deployments.probe import http_get_json
from worker.deployments.spec import BackendError, DeploymentSpec, ReplicaHealth, Resources, VersionSpec


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    directory = tmp_path_factory.mktemp("docker-bundles")
    return {"a": save_random_forest(directory, "a", seed=0), "b": save_random_forest(directory, "b", seed=7)}


def make_spec(bundles: dict[str, Bundle], weights: tuple[int, int] = (100, 0), **changes: object) -> DeploymentSpec:
    versions = (
        VersionSpec(1, "v1", bundles["a"].path, bundles["a"].sha256, weights[0]),
        VersionSpec(2, "v2", bundles["b"].path, bundles["b"].sha256, weights[1]),
    )
    return DeploymentSpec(deployment_id=11, name="dockered", versions=versions, **changes)


def test_build_context_holds_the_runtime_and_the_models_but_no_spec(tmp_path: Path, bundles: dict) -> None:
    spec = make_spec(bundles, (90, 10), token="t", console_url="http://127.0.0.1:8000/api/v1/ingest/predictions/")
    context = build_context(spec, tmp_path / "ctx")
    assert (context / "serving" / "Dockerfile").exists()
    assert (context / "serving" / "requirements.txt").read_text() == (
        REPO_ROOT / "serving/requirements.txt"
    ).read_text()
    assert (context / "serving" / "__main__.py").exists()
    assert not list(context.rglob("__pycache__"))
    dockerfile = (context / "serving" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3.11-slim$", dockerfile, re.M)
    assert "COPY ${ARTIFACTS}/ /models/" in dockerfile
    assert sorted(p.name for p in (context / "models").iterdir()) == sorted(
        f"{bundles[k].sha256}.zip" for k in ("a", "b")
    ), "the bundles only: the spec, with its token, is never in an image layer"
    for key in ("a", "b"):
        artifact = context / "models" / f"{bundles[key].sha256}.zip"
        assert hashlib.sha256(artifact.read_bytes()).hexdigest() == bundles[key].sha256
    assert sorted(p.name for p in context.iterdir()) == ["models", "serving"]


def test_the_container_spec_names_the_images_models_and_is_readable_only_by_the_server(bundles: dict) -> None:
    spec = make_spec(bundles, (90, 10), token="t")
    text = container_spec(spec)
    server_spec = json.loads(text)
    assert [(v["artifact_path"], v["weight"]) for v in server_spec["versions"]] == [
        (f"/models/{bundles['a'].sha256}.zip", 90),
        (f"/models/{bundles['b'].sha256}.zip", 10),
    ]
    assert server_spec["token"] == "t"
    with tarfile.open(fileobj=io.BytesIO(spec_archive(text))) as archive:
        (member,) = archive.getmembers()
        assert (member.name, member.mode, member.uid, member.gid) == ("spec.json", 0o400, 10001, 10001)
        assert archive.extractfile(member).read().decode() == text


def test_container_limits_come_from_the_spec_resources() -> None:
    assert limits(Resources(cpu_limit="500m", memory_limit="512Mi")) == {
        "nano_cpus": 500_000_000,
        "mem_limit": 512 * 2**20,
        "memswap_limit": 512 * 2**20,
        "pids_limit": PIDS_LIMIT,
    }
    assert limits(Resources())["mem_limit"] == 2**30 and limits(Resources())["nano_cpus"] == 10**9
    assert limits(Resources(cpu_limit="1.5", memory_limit="2G"))["nano_cpus"] == 1_500_000_000
    with pytest.raises(BackendError, match="resources.memory_limit"):
        limits(Resources(memory_limit="lots"))
    with pytest.raises(BackendError, match="resources.cpu_limit"):
        limits(Resources(cpu_limit="0"))


def test_build_context_refuses_a_tampered_artifact(tmp_path: Path, bundles: dict) -> None:
    tampered = tmp_path / "tampered.zip"
    tampered.write_bytes(Path(bundles["a"].path).read_bytes() + b"x")
    spec = DeploymentSpec(
        deployment_id=1, name="t", versions=(VersionSpec(1, "v1", str(tampered), bundles["a"].sha256, 100),)
    )
    with pytest.raises(BackendError, match="has sha256"):
        build_context(spec, tmp_path / "ctx")


def test_image_tag_follows_the_artifact_set_not_the_split(bundles: dict) -> None:
    assert image_tag(make_spec(bundles)) == image_tag(make_spec(bundles, (50, 50), token="other"))
    only_a = DeploymentSpec(deployment_id=11, name="dockered", versions=(version(1, bundles["a"], 100),))
    assert image_tag(only_a) != image_tag(make_spec(bundles))


def test_image_tag_follows_the_model_server_runtime(tmp_path: Path, bundles: dict) -> None:
    shutil.copytree(REPO_ROOT / "serving", tmp_path / "serving", ignore=shutil.ignore_patterns("__pycache__"))
    spec = make_spec(bundles)
    assert image_tag(spec, tmp_path) == image_tag(spec), "the same runtime elsewhere, the same image"
    (tmp_path / "serving" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "serving" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"cache")
    assert image_tag(spec, tmp_path) == image_tag(spec), "caches are not part of the runtime"
    upgraded = tmp_path / "upgraded"
    shutil.copytree(tmp_path / "serving", upgraded / "serving")
    (upgraded / "serving" / "app.py").write_text((upgraded / "serving" / "app.py").read_text() + "\n# v2\n")
    assert image_tag(spec, upgraded) != image_tag(spec), "a changed model server builds a new image"


@pytest.fixture
def backend(docker_client: object, tmp_path: Path) -> DockerBackend:  # noqa: F811 (the fixture above)
    backend = DockerBackend(docker_client, work_dir=tmp_path, base_image=ensure_base_image(docker_client))
    yield backend
    backend.delete("dockered")


def test_containers_serve_reload_are_replaced_scale_and_restart_after_a_crash(
    backend: DockerBackend, bundles: dict
) -> None:
    spec = make_spec(bundles, replicas=2)
    observed = backend.apply(spec)
    assert [r.health for r in observed.replicas] == [ReplicaHealth.READY, ReplicaHealth.READY]
    assert len({r.port for r in observed.replicas}) == 2 and all(r.container_id for r in observed.replicas)
    status, metadata = http_get_json("127.0.0.1", observed.replicas[0].port, "/v2/models/dockered")
    assert status == 200 and metadata["parameters"]["traffic"][0]["weight"] == 100
    image = backend.client.images.get(image_tag(spec))
    assert image.labels[LABEL_DEPLOYMENT] == "dockered"
    # The container runs as the Dockerfile's unprivileged user, which alone may read the spec (the token).
    container = backend.client.containers.get(observed.replicas[0].container_id)
    assert container.exec_run(["python", "-c", "import os; print(os.getuid())"]).output.strip() == b"10001"
    mode = "import os; s = os.stat('/run/model-server/spec.json'); print(oct(s.st_mode & 0o777), s.st_uid)"
    assert container.exec_run(["python", "-c", mode]).output.strip() == b"0o400 10001"
    # Confined: limits from the spec's resources, no privileges to gain, no capabilities, a read-only root.
    host_config = container.attrs["HostConfig"]
    assert host_config["Memory"] == host_config["MemorySwap"] == 2**30 and host_config["NanoCpus"] == 10**9
    assert host_config["PidsLimit"] == PIDS_LIMIT
    assert host_config["SecurityOpt"] == ["no-new-privileges"] and host_config["CapDrop"] == ["ALL"]
    assert host_config["ReadonlyRootfs"] is True
    write = "import sys\ntry:\n open('/app/x', 'w')\nexcept OSError as e:\n print(e.errno)"
    assert container.exec_run(["python", "-c", write]).output.strip() == b"30"  # EROFS
    assert container.exec_run(["python", "-c", "open('/tmp/x', 'w').write('ok')"]).exit_code == 0
    ids = [r.container_id for r in observed.replicas]
    assert [r.container_id for r in backend.apply(spec).replicas] == ids, "nothing changes"

    # Both containers share the endpoint: the kernel spreads connections over them.
    endpoint = observed.endpoint
    assert endpoint.startswith("http://127.0.0.1:") and endpoint not in {r.url for r in observed.replicas}
    assert all(predict(endpoint) == (200, "1") for _ in range(100))
    assert all(served_requests(r.url) >= 15 for r in observed.replicas)
    # Each container's CPU time and memory, read from one stats sample when observing.
    measured = backend.observe("dockered").replicas
    assert all(r.cpu_seconds > 0 and 10 * 2**20 < r.rss_bytes < 2**30 for r in measured), measured

    # A blue-green switch keeps the artifact set: the running containers reload, under load, losing nothing.
    with load_on(endpoint) as load:
        switched = backend.apply(make_spec(bundles, (0, 100), replicas=2))
    assert [r.container_id for r in switched.replicas] == ids, "reloaded, not replaced"
    assert all(r.traffic == {"1": 0, "2": 100} for r in switched.replicas)
    assert load.failures == [] and "1" in load.answered and load.answered[-1] == "2"

    # A new artifact set builds an image and replaces the containers; the endpoint stays.
    only_b = DeploymentSpec(deployment_id=11, name="dockered", versions=(version(2, bundles["b"], 100),), replicas=2)
    replaced = backend.apply(only_b)
    assert not {r.container_id for r in replaced.replicas} & set(ids)
    assert replaced.endpoint == endpoint and predict(endpoint) == (200, "2")
    assert all(r.traffic == {"2": 100} for r in replaced.replicas)

    backend.client.containers.get(replaced.replicas[0].container_id).kill()
    assert backend.observe("dockered").replicas[0].health == ReplicaHealth.DEAD
    repaired = backend.apply(only_b)
    assert [r.health for r in repaired.replicas] == [ReplicaHealth.READY, ReplicaHealth.READY]

    # A new replica copies a running one's image and spec.
    scaled = backend.scale("dockered", 3)
    assert len(scaled.replicas) == 3
    deadline = time.monotonic() + 60
    while scaled.ready_replicas < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        scaled = backend.observe("dockered")
    assert scaled.serves(only_b.with_replicas(3))
    assert len(backend.scale("dockered", 1).replicas) == 1


def test_container_usage_reads_cpu_time_and_memory_without_page_cache() -> None:
    """The stats document as the Docker Engine API answers it (a stub container: the measurement against a real
    engine is in the test above, which needs dockerd)."""

    class Container:
        def __init__(self, stats: dict | Exception) -> None:
            self._stats = stats

        def stats(self, *, stream: bool, one_shot: bool) -> dict:
            assert stream is False and one_shot is True
            if isinstance(self._stats, Exception):
                raise self._stats
            return self._stats

    stats = {
        "cpu_stats": {"cpu_usage": {"total_usage": 2_500_000_000}},
        "memory_stats": {"usage": 300 * 2**20, "stats": {"inactive_file": 100 * 2**20}},
    }
    assert container_usage(Container(stats)) == (2.5, 200 * 2**20)
    assert container_usage(Container({"memory_stats": {}})) == (None, None)
    assert container_usage(Container(OSError("engine gone"))) == (None, None)
