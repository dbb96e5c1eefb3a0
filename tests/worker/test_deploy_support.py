"""Shared pieces of the deployment backend tests: a local dockerd and an offline base image for it.

No image can be pulled here, so `serving/Dockerfile` cannot start from `python:3.11-slim`. Instead the
tests build a stand-in base image from this machine's files, once, and cache it in the engine's data root
(`/tmp/mlops-docker/data`, reused across test runs):

- the CPython 3.11 that runs the tests, relocated to `/usr/local` (as in the official image);
- from the console's virtualenv, exactly the distributions `serving/requirements.txt` needs, with their
  dependencies and `.dist-info` folders, so the Dockerfile's `pip install -r serving/requirements.txt`
  finds everything satisfied and never reaches for the network;
- every shared library those binaries link to (from `ldd`), plus `sh`, `mkdir`, `chown`, `rm` and
  `useradd` for the Dockerfile's `RUN` lines;
- an `apt-get` that does nothing: the slim image's `apt-get install libgomp1` is for XGBoost's OpenMP
  runtime, which `ldd` already copied in.

The tarball goes into a `FROM scratch` image (`ADD` unpacks it). It takes about a minute the first time.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.required_services import require_service

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_ROOT = Path(os.environ.get("MLOPS_TEST_DOCKER_ROOT", "/tmp/mlops-docker"))
SOCKET = DOCKER_ROOT / "docker.sock"
# The base image holds what serving/requirements.txt names, so its tag follows that file: a changed pin builds
# a new base image instead of reusing a cached one that lacks it.
BASE_IMAGE = (
    "mlops-test/python-base:3.11-"
    + hashlib.sha256((REPO_ROOT / "serving" / "requirements.txt").read_bytes()).hexdigest()[:12]
)
DOCKERD_START_SECONDS = 30.0
TOOLS = ["/usr/bin/sh", "/usr/bin/mkdir", "/usr/bin/chown", "/usr/bin/rm", "/usr/sbin/useradd"]
STDLIB_SKIP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "site-packages",
    "config-3.11-x86_64-linux-gnu",
}
ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": "root:x:0:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/gshadow": "root:*::\n",
    "etc/login.defs": "SYS_UID_MIN 100\nSYS_UID_MAX 999\nUID_MIN 1000\nUID_MAX 60000\nSYS_GID_MIN 100\n"
    "SYS_GID_MAX 999\nGID_MIN 1000\nGID_MAX 60000\n",
}
BASE_DOCKERFILE = """FROM scratch
ADD rootfs.tar /
ENV PATH=/usr/local/bin:/usr/bin:/usr/sbin LD_LIBRARY_PATH=/usr/local/lib LANG=C.UTF-8
CMD ["python3"]
"""


def _requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(re.split(r"[=<>!~\[ ;]", line, maxsplit=1)[0])
    return names


def serving_distributions() -> list[importlib.metadata.Distribution]:
    """The distributions `serving/requirements.txt` names, with their transitive (non-extra) dependencies."""
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    pending = _requirement_names(REPO_ROOT / "serving" / "requirements.txt")
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(seen.values())


def _shared_libraries(binaries: list[Path]) -> set[str]:
    libraries: set[str] = set()
    for binary in binaries:
        result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            match = re.search(r"(/\S+)", line.split("=>")[-1])
            if match and os.path.exists(match.group(1)):
                libraries.add(match.group(1))
    return libraries


_WRITTEN: dict[int, set[str]] = {}


def _add(tar: tarfile.TarFile, source: Path, arcname: str) -> None:
    # /bin, /lib, /lib64 and /sbin are symlinks into /usr (merged /usr); a member under them would clash.
    top, _, rest = arcname.partition("/")
    if top in {"bin", "lib", "lib64", "sbin"}:
        arcname = f"usr/{top}/{rest}"
    written = _WRITTEN.setdefault(id(tar), set())
    if arcname not in written:
        written.add(arcname)
        tar.add(str(source), arcname=arcname, recursive=False)


def write_rootfs(target: Path) -> None:
    prefix = Path(sys.base_prefix)
    site_packages = Path(sysconfig.get_paths()["purelib"])
    stdlib = prefix / "lib" / "python3.11"
    binaries: list[Path] = [prefix / "bin" / "python3.11", *map(Path, TOOLS)]
    with tarfile.open(target, "w") as tar:
        for link, to in {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}.items():
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, to
            tar.addfile(info)
        for folder in ("tmp", "etc/default", "root", "usr/local/bin"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        for name, text in ETC_FILES.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600 if "shadow" in name else 0o644
            tar.addfile(info, io.BytesIO(data))
        scripts = {
            "usr/bin/apt-get": "#!/bin/sh\n# Test base image: what apt-get would add is already here.\nexit 0\n",
            "usr/local/bin/pip": "#!/usr/local/bin/python3.11\nimport sys\nfrom pip._internal.cli.main import main\n"
            "sys.exit(main())\n",
        }
        for name, text in scripts.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))

        _add(tar, prefix / "bin" / "python3.11", "usr/local/bin/python3.11")
        for alias in ("python3", "python"):
            info = tarfile.TarInfo(f"usr/local/bin/{alias}")
            info.type, info.linkname = tarfile.SYMTYPE, "python3.11"
            tar.addfile(info)
        for library in (prefix / "lib").glob("libpython3*.so*"):
            _add(tar, library, f"usr/local/lib/{library.name}")
        for entry in stdlib.iterdir():
            if entry.name not in STDLIB_SKIP:
                tar.add(str(entry), arcname=f"usr/local/lib/python3.11/{entry.name}")
                if entry.suffix == ".so":
                    binaries.append(entry)
        binaries += list((stdlib / "lib-dynload").glob("*.so"))
        # pip (from the base interpreter) runs the Dockerfile's `pip install`, which finds everything installed.
        for name in ("pip", "setuptools"):
            for entry in (stdlib / "site-packages").glob(f"{name}*"):
                tar.add(str(entry), arcname=f"usr/local/lib/python3.11/site-packages/{entry.name}")
        for dist in serving_distributions():
            for file in dist.files or []:
                source = Path(dist.locate_file(file)).resolve()
                if not source.is_file() or not str(source).startswith(str(site_packages)):
                    continue
                _add(tar, source, f"usr/local/lib/python3.11/site-packages/{source.relative_to(site_packages)}")
                if ".so" in source.name:
                    binaries.append(source)
        for tool in TOOLS:
            _add(tar, Path(tool).resolve(), tool.lstrip("/"))
        for library in sorted(_shared_libraries(binaries)):
            if str(prefix) in library or str(site_packages) in library:
                continue
            real = Path(library).resolve()
            _add(tar, real, library.lstrip("/"))


def ensure_base_image(client: object) -> str:
    """Build the offline base image once; later runs find it in the cached data root."""
    import docker.errors

    try:
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    context = DOCKER_ROOT / "base-context"
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    write_rootfs(context / "rootfs.tar")
    (context / "Dockerfile").write_text(BASE_DOCKERFILE)
    client.images.build(path=str(context), tag=BASE_IMAGE, rm=True, forcerm=True)
    shutil.rmtree(context, ignore_errors=True)
    return BASE_IMAGE


def _socket_answers() -> bool:
    import docker

    try:
        docker.DockerClient(base_url=f"unix://{SOCKET}", timeout=5).ping()
    except Exception:  # not up (yet)
        return False
    return True


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    """A docker engine of our own on a private socket, started and stopped by the test session."""
    import docker

    dockerd = shutil.which("dockerd")
    if dockerd is None:
        require_service("dockerd is not installed (apt-get install -y docker.io)")
    process = None
    if not _socket_answers():
        DOCKER_ROOT.mkdir(parents=True, exist_ok=True)
        log = open(DOCKER_ROOT / "dockerd.log", "ab")  # noqa: SIM115 (kept open for the daemon's life)
        process = subprocess.Popen(
            [
                dockerd,
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                f"--host=unix://{SOCKET}",
                f"--data-root={DOCKER_ROOT / 'data'}",
                f"--exec-root={DOCKER_ROOT / 'exec'}",
                f"--pidfile={DOCKER_ROOT / 'docker.pid'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + DOCKERD_START_SECONDS
        while not _socket_answers():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                tail = (DOCKER_ROOT / "dockerd.log").read_text(errors="replace")[-2000:]
                require_service(f"dockerd could not start here:\n{tail}")
            time.sleep(0.3)
    client = docker.DockerClient(base_url=f"unix://{SOCKET}", timeout=600)
    yield client
    client.close()
    if process is not None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
