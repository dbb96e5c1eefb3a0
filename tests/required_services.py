"""What a test does when a service it needs (dockerd, Redis, Chromium) is missing.

On a developer's machine it skips, with the reason. When `CI` is set (to anything non-empty) it fails: a CI
run that skipped the Docker backend or the browser tests has not tested them, and must not pass.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def require_service(reason: str) -> NoReturn:
    """Skip the test because a service it needs is missing (`reason` says which); fail instead under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so a missing service fails the run: {reason}", pytrace=False)
    pytest.skip(reason)
