"""A test that needs a missing service skips on a developer's machine and fails the run when `CI` is set."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

NEEDS_DOCKERD = """
import pytest

from tests.required_services import require_service


@pytest.fixture
def dockerd():
    require_service("dockerd is not installed")


def test_the_docker_backend(dockerd):
    pass
"""


@pytest.fixture
def run_needing_dockerd(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    pytester.makepyfile(test_needs_dockerd=NEEDS_DOCKERD)

    def run(ci: str | None) -> pytest.RunResult:
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        return pytester.runpytest("-p", "no:django", "-p", "no:cacheprovider", "-rs")

    return run


@pytest.mark.parametrize("ci", [None, ""])
def test_without_ci_a_missing_service_skips_with_its_reason(run_needing_dockerd, ci: str | None) -> None:
    result = run_needing_dockerd(ci)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*dockerd is not installed"])


@pytest.mark.parametrize("ci", ["1", "true"])
def test_under_ci_a_missing_service_fails_the_run(run_needing_dockerd, ci: str) -> None:
    result = run_needing_dockerd(ci)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CI is set, so a missing service fails the run: dockerd is not installed*"])
