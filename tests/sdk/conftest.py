"""SDK fixtures: the SDK talks to a live console (pytest-django's live server: a real HTTP server on loopback,
on the test database) with a personal API token, exactly as a notebook or a CI job would.

`sdk_env(live_server, user, project)` is the environment a shell needs (MLOPS_URL, MLOPS_TOKEN, MLOPS_PROJECT,
and PYTHONPATH so `python -m mlops_sdk.cli` finds the SDK in the tree, as `pip install ./sdk` would install it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from apps.core.services import api_token_create

ROOT = Path(__file__).resolve().parents[2]
SDK_ROOT = ROOT / "sdk"


def token_for(user: Any) -> str:
    _, key = api_token_create(user=user, name="sdk tests")
    return key


def sdk_client(live_server: Any, user: Any, project: Any, **kwargs: Any) -> Any:
    from mlops_sdk import Client

    return Client(live_server.url, token=token_for(user), project=project.slug, **kwargs)


def sdk_env(live_server: Any, user: Any, project: Any) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLOPS_")}
    return {
        **env,
        "MLOPS_URL": live_server.url,
        "MLOPS_TOKEN": token_for(user),
        "MLOPS_PROJECT": project.slug,
        "PYTHONPATH": str(SDK_ROOT),
    }


@pytest.fixture
def sdk(live_server: Any, member: Any, project: Any) -> Any:
    """The SDK's client as an editor of the project (quick retries: the tests do not wait on backoff)."""
    return sdk_client(live_server, member, project, backoff=0.05)
