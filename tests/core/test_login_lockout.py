"""Brute force: the login page, the admin's login and API tokens share one lockout (django-axes).

LOGIN_FAILURE_LIMIT failures (10) for a username or from an address lock it; the lock lifts once the cool-off
passes without another failure. Tests shorten the cool-off instead of waiting a minute.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from apps.core import services
from apps.core.authentication import client_ip
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"
COOLOFF = 2


@pytest.fixture(autouse=True)
def short_cooloff(settings: object) -> None:
    settings.AXES_COOLOFF_TIME = timedelta(seconds=COOLOFF)
    settings.LOGIN_COOLOFF_SECONDS = COOLOFF


def sign_in(client: Client, username: str, password: str, url: str = "/accounts/login/") -> int:
    return client.post(url, {"username": username, "password": password}).status_code


def test_the_eleventh_bad_password_is_refused_and_the_right_one_works_after_the_cool_off() -> None:
    UserFactory(username="alice", is_staff=True)
    client = Client()
    answers = [sign_in(client, "alice", f"guess-{n}") for n in range(10)]
    assert answers == [200] * 9 + [429], "nine form errors, then the lockout"
    eleventh = client.post("/accounts/login/", {"username": "alice", "password": "guess-10"})
    assert eleventh.status_code == 429 and eleventh["Retry-After"] == str(COOLOFF)
    assert "Too many failed sign-ins" in eleventh.content.decode()
    assert sign_in(client, "alice", PASSWORD) == 429, "locked: even the right password"
    assert sign_in(Client(), "alice", PASSWORD, "/admin/login/") == 429, "the admin's login shares the lock"
    assert "_auth_user_id" not in client.session
    time.sleep(COOLOFF + 0.2)
    assert sign_in(client, "alice", PASSWORD) == 302
    assert client.session["_auth_user_id"] == str(UserFactory._meta.model.objects.get(username="alice").pk)


def test_trying_many_usernames_from_one_address_locks_the_address() -> None:
    UserFactory(username="bob")
    client = Client()
    for n in range(10):
        sign_in(client, f"nobody-{n}", "guess")
    assert sign_in(client, "bob", PASSWORD) == 429
    assert sign_in(Client(REMOTE_ADDR="10.1.2.3"), "bob", PASSWORD) == 302, "another address is not locked"


def test_bad_api_tokens_lock_the_address_and_a_good_token_works_after_the_cool_off() -> None:
    user = UserFactory(username="carol")
    _, key = services.api_token_create(user=user, name="ci")
    api = APIClient()
    answers = []
    for n in range(10):
        answers.append(api.get("/api/v1/projects/", HTTP_AUTHORIZATION=f"Bearer mlc_guess{n:040d}").status_code)
    assert answers == [401] * 9 + [429]
    refused = api.get("/api/v1/projects/", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert refused.status_code == 429 and "too many failed sign-ins" in refused.json()["detail"]
    assert refused["Retry-After"] == str(COOLOFF)
    assert sign_in(Client(), "carol", PASSWORD) == 429, "the address is locked for passwords too"
    time.sleep(COOLOFF + 0.2)
    assert api.get("/api/v1/projects/", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200


def test_behind_the_proxy_the_address_is_the_one_the_proxy_appended(settings: object) -> None:
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    settings.SECURE_BEHIND_PROXY = False
    assert client_ip(request) == "10.0.0.2", "without a proxy the header is the client's to forge"
    settings.SECURE_BEHIND_PROXY = True
    assert client_ip(request) == "203.0.113.9"
