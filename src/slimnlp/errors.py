"""User-facing errors: one line naming the bad key/value and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value. The runner prints ``str(err)`` as one line and exits with status 2."""

    def __init__(self, key: str, value: object, allowed: str, message: str | None = None) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(message or f"{key}={value!r} is invalid: {allowed}")
