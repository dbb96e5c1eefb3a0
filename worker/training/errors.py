"""Errors a user can cause in training, named by where in the config they went wrong."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad training setting; `field` is a dotted path into the config, e.g. `params.n_estimators`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TrainingCancelled(Exception):  # noqa: N818 - "cancelled" is the user's word for it, not an error
    """`should_stop()` said so; raised between epochs/rounds and around sklearn fits."""
