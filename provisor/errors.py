"""Every error a Provisor user can meet, in one hierarchy.

Does: give each failure a class, a message that names the input at fault (file, line, row, field,
identity) and says what to do next; hold the one table of exit codes the CLI returns, for errors
and for outcomes that are not errors (rows rejected, a leaver's access still present).
Does not: log, print or catch anything; callers decide how to present an error. A message
never carries a credential: it is redacted (``provisor.redaction``) when the error is made.
"""

from __future__ import annotations

from enum import IntEnum

from provisor.redaction import redact


class ExitCode(IntEnum):
    """Every exit code of ``provisor``, in one place (documented in docs/quickstart.md)."""

    OK = 0
    ERROR = 1  # an error with no more specific class
    CONFIG = 2  # provisor.yaml missing or invalid; also a usage error
    POLICY = 3  # a policy file is invalid, or a secret cannot be resolved
    FEED = 4  # a whole feed file is refused
    NOT_FOUND = 5  # an identity, target, hold, task or case does not exist
    LIFECYCLE = 6  # a lifecycle event cannot be recorded
    WORKSPACE = 7  # the workspace database is missing or at another schema
    AUDIT_TAMPERED = 8  # the audit chain failed verification
    DATABASE = 9  # the database refused a statement
    ROWS_REJECTED = 10  # some rows of a feed or export were rejected (the rest went through)
    APPLY_FAILED = 11  # operations failed for good, or a target could not be opened
    LEAVER_FAILED = 12  # something a leaver had is still present
    LEAVER_INCOMPLETE = 13  # nothing present, but some layer could not be verified
    RECONCILE_FAILED = 14  # a target could not be read
    TARGET_UNPROVEN = 15  # a target could not be probed, or no membership read works
    DEBT_UNKNOWN = 16  # some leaver's access has not been read since the termination
    AUDIT_UNCHECKED = 17  # the audit log's signed checkpoints cannot be checked (no key)
    DENIED = 18  # the acting person may not do this: a role, a scope or a four-eyes rule
    ABORTED = 130  # interrupted by the user


class ProvisorError(Exception):
    """Base of every error Provisor raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code: int = ExitCode.ERROR
    # whether credential-shaped text is masked too, besides every known credential
    masks_shapes = True

    def __init__(self, message: str) -> None:
        # targets' answers quoted in errors may echo credentials
        message = redact(message, shapes=self.masks_shapes)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ProvisorError):
    """The workspace configuration (``provisor.yaml``) is missing or invalid."""

    exit_code = ExitCode.CONFIG


class PolicyError(ProvisorError):
    """A policy file is invalid. ``problems`` lists every ``file:line field: reason`` found."""

    exit_code = ExitCode.POLICY
    # its lines name settings ("api.headers.Authorization: ..."), never a value (a credential
    # written in policy is refused without being quoted); known credentials are still masked
    masks_shapes = False

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        if self.problems:
            message = message + "\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(message)


class SecretError(ProvisorError):
    """A secret reference cannot be resolved, or a secret was written inline in plain text."""

    exit_code = ExitCode.POLICY


class FeedError(ProvisorError):
    """A whole feed file is refused (missing required columns, unreadable file, unknown format)."""

    exit_code = ExitCode.FEED


class NotFoundError(ProvisorError):
    """An identity, target, hold or other named object does not exist."""

    exit_code = ExitCode.NOT_FOUND


class LifecycleError(ProvisorError):
    """A lifecycle event cannot be recorded (e.g. rescinding outside the window)."""

    exit_code = ExitCode.LIFECYCLE


class WorkspaceError(ProvisorError):
    """The workspace database is missing, or its schema is not at the version this code needs."""

    exit_code = ExitCode.WORKSPACE


class DeniedError(ProvisorError):
    """The acting person may not do this: their roles or their token's scopes do not allow it,
    or a four-eyes rule refuses it (verifying one's own task, approving one's own hold)."""

    exit_code = ExitCode.DENIED


class CredentialsError(ProvisorError):
    """A name and password, or a token, that do not sign anyone in (never says which part)."""

    exit_code = ExitCode.DENIED
