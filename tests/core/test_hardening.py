"""What anonymous users can learn from the console and what the compose file exposes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def test_readyz_answers_a_status_word_and_logs_the_database_error(caplog: pytest.LogCaptureFixture) -> None:
    # No django_db mark: pytest-django refuses the query, a real database failure as the view sees it.
    with caplog.at_level(logging.ERROR, logger="apps.core.views"):
        response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unavailable"}
    assert "Database access not allowed" in caplog.text, "the detail goes to the log"


def test_mailpit_is_published_on_loopback_only() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ports = compose["services"]["mailpit"]["ports"]
    assert ports and all(str(port).startswith("127.0.0.1:") for port in ports), ports
