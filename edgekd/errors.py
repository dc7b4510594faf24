"""Typed errors. Each carries a one-line message, a hint and the CLI exit code from the contract.

Exit codes: 0 ok, 1 gate failed, 2 user error (config, data, input), 3 target/runtime
unavailable, 4 internal or stage failure.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_USER = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERNAL = 4


class EdgekdError(Exception):
    """Base error: `message` is one line, `hint` tells the user what to do next."""

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UserError(EdgekdError):
    """Bad config, card, data or input (exit 2)."""

    exit_code = EXIT_USER


class ConfigError(UserError):
    """A recipe or target card, or a --set override, is invalid."""


class DataError(UserError):
    """A dataset is missing, empty or corrupt."""


class TargetUnavailable(EdgekdError):
    """The target's runtime or device is not present here (exit 3)."""

    exit_code = EXIT_UNAVAILABLE


class StageError(EdgekdError):
    """A stage failed: parity check, training divergence, conversion error (exit 4)."""

    exit_code = EXIT_INTERNAL


class GateFailed(EdgekdError):
    """The regression gate found a breach (exit 1)."""

    exit_code = EXIT_GATE


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters ("" when it has none):
    what a one-line error quotes of a library's exception."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""
