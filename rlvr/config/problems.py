"""What every section's rules report: a list of messages (``Problems``), and the error a person has to fix."""

from __future__ import annotations

from typing import Any


class Problems(list):
    """Messages about a config; ``require`` adds one when a rule does not hold."""

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.append(message)

    def one_of(self, key: str, value: Any, allowed: tuple) -> None:
        self.require(value in allowed, f"{key}={value!r} is not supported; choose one of "
                                       f"{', '.join(map(str, allowed))}.")


class ConfigError(ValueError):
    """A config problem a person has to fix; the message says what, where and how."""
