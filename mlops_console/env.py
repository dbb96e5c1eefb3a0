"""Read settings from the environment; a bad value fails at start with the variable's name.

Kept free of Django imports so the settings module can use it before Django is configured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse


class EnvError(Exception):
    """A setting in the environment is missing or malformed."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise EnvError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise EnvError(f"{name} must be an integer; got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise EnvError(f"{name} must be at least {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise EnvError(f"{name} must be at most {maximum}; got {value}")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_secret(name: str, *, debug: bool, dev_default: str) -> str:
    """A secret: required outside DEBUG, so production never runs on a default."""
    value = os.environ.get(name, "")
    if value:
        return value
    if debug:
        return dev_default
    raise EnvError(f"{name} must be set when DEBUG is off (it has no default in production)")


@dataclass(frozen=True)
class Database:
    engine: str
    name: str
    user: str = ""
    password: str = ""
    host: str = ""
    port: str = ""
    options: dict[str, str] | None = None

    def as_django(self) -> dict[str, object]:
        config: dict[str, object] = {
            "ENGINE": self.engine,
            "NAME": self.name,
            "USER": self.user,
            "PASSWORD": self.password,
            "HOST": self.host,
            "PORT": self.port,
            "OPTIONS": dict(self.options or {}),
        }
        return config


_ENGINES = {
    "postgres": "django.db.backends.postgresql",
    "postgresql": "django.db.backends.postgresql",
    "sqlite": "django.db.backends.sqlite3",
}


# The zero-setup database is shared by the web server, the Celery worker's processes and beat. WAL lets
# readers go on while one writes; IMMEDIATE transactions take the write lock at BEGIN, so a transaction that
# reads then writes waits its turn (up to `timeout` seconds) instead of failing with "database is locked".
SQLITE_OPTIONS = {
    "timeout": 30,
    "transaction_mode": "IMMEDIATE",
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
}


def env_database(name: str, default: str) -> Database:
    """Parse `postgres://user:pass@host:port/db` or `sqlite:///path` from the environment."""
    raw = os.environ.get(name) or default
    parsed = urlparse(raw)
    engine = _ENGINES.get(parsed.scheme)
    if engine is None:
        raise EnvError(f"{name} must start with postgres:// or sqlite:///; got scheme {parsed.scheme!r}")
    if parsed.scheme == "sqlite":
        path = unquote(parsed.path)
        if path.startswith("//"):
            path = path[1:]
        elif path.startswith("/") and not raw.startswith("sqlite:////"):
            path = path[1:]
        if not path:
            raise EnvError(f"{name} must name a file, as in sqlite:///db.sqlite3")
        return Database(engine=engine, name=path, options=dict(SQLITE_OPTIONS))
    db_name = unquote(parsed.path.lstrip("/"))
    if not db_name:
        raise EnvError(f"{name} must name a database, as in postgres://user@host:5432/mlops")
    options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
    return Database(
        engine=engine,
        name=db_name,
        user=unquote(parsed.username or ""),
        password=unquote(parsed.password or ""),
        host=parsed.hostname or "",
        port=str(parsed.port or ""),
        options=options,
    )
