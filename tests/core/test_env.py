from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_console.env import EnvError, env_bool, env_database, env_int, env_secret

ROOT = Path(__file__).resolve().parents[2]


def test_env_bool_rejects_garbage_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_FLAG", "maybe")
    with pytest.raises(EnvError, match="SOME_FLAG"):
        env_bool("SOME_FLAG")
    monkeypatch.setenv("SOME_FLAG", "Yes")
    assert env_bool("SOME_FLAG") is True


def test_env_int_checks_type_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMIT", "ten")
    with pytest.raises(EnvError, match="LIMIT must be an integer"):
        env_int("LIMIT", 1)
    monkeypatch.setenv("LIMIT", "0")
    with pytest.raises(EnvError, match="LIMIT must be at least 1"):
        env_int("LIMIT", 5, minimum=1)
    monkeypatch.delenv("LIMIT")
    assert env_int("LIMIT", 5) == 5


def test_secret_has_no_default_outside_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKEN_X", raising=False)
    with pytest.raises(EnvError, match="TOKEN_X must be set when DEBUG is off"):
        env_secret("TOKEN_X", debug=False, dev_default="dev")
    assert env_secret("TOKEN_X", debug=True, dev_default="dev") == "dev"


def test_database_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB", "postgres://u:p%40ss@db.example:6543/mlops?sslmode=require")
    db = env_database("DB", "sqlite:///x.sqlite3")
    assert (db.engine, db.name, db.user, db.password, db.host, db.port) == (
        "django.db.backends.postgresql",
        "mlops",
        "u",
        "p@ss",
        "db.example",
        "6543",
    )
    assert db.options == {"sslmode": "require"}
    monkeypatch.setenv("DB", "sqlite:////abs/path/db.sqlite3")
    assert env_database("DB", "").name == "/abs/path/db.sqlite3"
    monkeypatch.setenv("DB", "mysql://x/y")
    with pytest.raises(EnvError, match="DB must start with postgres:// or sqlite:///"):
        env_database("DB", "")


SQLITE_WRITER = """
import sys
import django
from django.conf import settings
from mlops_console.env import env_database

settings.configure(DATABASES={"default": env_database("DB", "").as_django()})
django.setup()
from django.db import connection, transaction

for _ in range(int(sys.argv[1])):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT n FROM counter")
        (n,) = cursor.fetchone()
        cursor.execute("UPDATE counter SET n = %s", [n + 1])
"""


def test_sqlite_lets_processes_write_at_once_without_locking_errors(tmp_path: Path) -> None:
    """The zero-setup database: web, worker processes and beat read-then-write it at the same time."""
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE counter (n INTEGER)")
        db.execute("INSERT INTO counter VALUES (0)")
    env = {**os.environ, "DB": f"sqlite:///{path}", "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, "200"], env=env, cwd=ROOT, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [writer.communicate(timeout=120)[1].decode() for writer in writers]
    assert [writer.returncode for writer in writers] == [0] * 4, errors
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT n FROM counter").fetchone() == (800,), "no update was lost"
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _django_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DEBUG", "DATABASE_URL"}}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", "check", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


def test_production_without_secret_key_fails_naming_it() -> None:
    result = _django_check({"DEBUG": "0"})
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in result.stderr


def test_bad_value_fails_at_start_naming_the_variable() -> None:
    result = _django_check({"DEBUG": "1", "EMAIL_PORT": "smtp"})
    assert result.returncode != 0
    assert "EMAIL_PORT must be an integer" in result.stderr


def test_check_deploy_passes_with_the_production_settings_of_env_example(tmp_path: Path) -> None:
    env = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = value
    env["SECRET_KEY"] = "a-long-random-production-secret-key-for-this-test-only-0123456789abcdef"
    env["VAR_DIR"] = str(tmp_path)
    result = _django_check(env, "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("bind", "environ", "expected"),
    [
        ("127.0.0.1:8123", {}, "http://127.0.0.1:8123"),
        ("0.0.0.0:9000", {}, "http://127.0.0.1:9000"),
        ("8001", {}, "http://127.0.0.1:8001"),
        ("127.0.0.1:8123", {"CONSOLE_INTERNAL_URL": "http://console.internal"}, "http://console.internal"),
    ],
)
def test_run_console_points_model_servers_at_the_address_it_binds(bind: str, environ: dict, expected: str) -> None:
    from apps.core.management.commands.run_console import child_environment

    environment = child_environment(bind, {"PATH": "/bin", **environ})
    assert environment["CONSOLE_INTERNAL_URL"] == expected and environment["PATH"] == "/bin"


def test_database_connections_are_kept_for_the_configured_age() -> None:
    """Production keeps a worker's connection (docker-compose and the chart set 60 s); a bad value names itself."""
    show = (
        "from django.conf import settings; database = settings.DATABASES['default']; "
        "print(database['CONN_MAX_AGE'], database['CONN_HEALTH_CHECKS'])"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mlops_console.settings", "DEBUG": "1", "PYTHONPATH": str(ROOT)}
    for value, expected in (("60", "60 True"), ("", "0 True")):
        result = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {show}"],
            cwd=ROOT,
            env={**env, "DATABASE_CONN_MAX_AGE": value},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.stdout.strip() == expected, result.stderr
    result = _django_check({"DEBUG": "1", "DATABASE_CONN_MAX_AGE": "-1"})
    assert result.returncode != 0
    assert "DATABASE_CONN_MAX_AGE must be at least 0" in result.stderr
