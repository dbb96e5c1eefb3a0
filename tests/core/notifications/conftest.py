from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.core.notifications.sinks import HookServer, running_server, running_smtp


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def smtp_sink(settings) -> Iterator[list]:
    with running_smtp(settings) as received:
        yield received
