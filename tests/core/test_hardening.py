"""What anonymous users can learn from the console, what the compose file exposes, and what the admin may not
change."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from django.test import Client

from tests.factories import ProjectFactory, UserFactory

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


def test_the_admin_cannot_change_approvals_or_retention(db: None) -> None:
    project = ProjectFactory(required_approvals=2)
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    response = client.post(
        f"/admin/core/project/{project.pk}/change/",
        {
            "name": project.name,
            "description": "edited in the admin",
            "required_approvals": 1,
            "prediction_log_retention_days": 1,
            "prediction_rollup_retention_days": 1,
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "memberships-MIN_NUM_FORMS": "0",
            "memberships-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.description == "edited in the admin" and project.required_approvals == 2
    assert (project.prediction_log_retention_days, project.prediction_rollup_retention_days) == (30, 400)
