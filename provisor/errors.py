"""Every error a Provisor user can meet, in one hierarchy.

Does: give each failure a class, a message that names the input at fault (file, line, row, field,
identity) and says what to do next, and an exit code the CLI returns.
Does not: log, print or catch anything; callers decide how to present an error.
"""

from __future__ import annotations


class ProvisorError(Exception):
    """Base of every error Provisor raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ProvisorError):
    """The workspace configuration (``provisor.yaml``) is missing or invalid."""

    exit_code = 2


class PolicyError(ProvisorError):
    """A policy file is invalid. ``problems`` lists every ``file:line field: reason`` found."""

    exit_code = 3

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        if self.problems:
            message = message + "\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


class SecretError(ProvisorError):
    """A secret reference cannot be resolved, or a secret was written inline in plain text."""

    exit_code = 3


class FeedError(ProvisorError):
    """A whole feed file is refused (missing required columns, unreadable file, unknown format)."""

    exit_code = 4


class NotFoundError(ProvisorError):
    """An identity, target, hold or other named object does not exist."""

    exit_code = 5


class LifecycleError(ProvisorError):
    """A lifecycle event cannot be recorded (e.g. rescinding outside the window)."""

    exit_code = 6


class WorkspaceError(ProvisorError):
    """The workspace database is missing, or its schema is not at the version this code needs."""

    exit_code = 7


class AuditChainError(ProvisorError):
    """The audit log failed verification; the message names the first bad event."""

    exit_code = 8
