"""The error tree and exit statuses.

Every expected failure is a `WatcherError` whose message is one line fit for a user; `cli.main`
prints it and returns its exit status. Backend errors carry one of two markers,
`TransientError` (worth retrying) or `PermanentError` (retrying cannot help), so that a single
predicate drives every retry loop. This module imports nothing of ours.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    CONFIG = 2
    WARNINGS = 3
    INTERRUPTED = 130


class WatcherError(Exception):
    """An expected failure; `str()` is the one line the user sees."""

    exit_code: ExitCode = ExitCode.FAILED


class ConfigError(WatcherError):
    """Every configuration problem found, one `VARIABLE: what is wrong` per entry."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class TransientError(Exception):
    """Marker: the same operation may succeed if tried again (network, timeout, 4xx)."""


class PermanentError(Exception):
    """Marker: trying again cannot help (credentials, trust, permission, full disk, bad path)."""


class BackendError(WatcherError):
    """A failure talking to the target. Without a marker it is a gap in a translation table."""


class ConnectionLostError(BackendError, TransientError):
    """Connection refused, reset, dropped or timed out."""


class TemporaryFailureError(BackendError, TransientError):
    """The server answered 'try again later'."""


class NotFoundError(BackendError, PermanentError):
    """The object or folder does not exist."""


class AuthError(BackendError, PermanentError):
    """The server refused the credentials."""


class TrustError(BackendError, PermanentError):
    """The server's identity could not be verified (host key or certificate)."""


class PermissionDeniedError(BackendError, PermanentError):
    """The server refused the operation on this path."""


class StorageFullError(BackendError, PermanentError):
    """No space left on the target."""


class BackendConfigError(BackendError, PermanentError):
    """The target cannot work as configured (bad path, unsupported server feature)."""


class RepositoryError(WatcherError):
    """The repository is missing, of an unknown format or inconsistent."""


class IntegrityError(RepositoryError):
    """Stored data does not match its hash, or a structure cannot be parsed."""


class SnapshotNotFoundError(RepositoryError):
    """No snapshot matches the given id, prefix or `latest`."""


class NotifyError(WatcherError):
    """A report could not be mailed; never fails a backup."""


class UnexpectedError(WatcherError):
    """An error no translation table knows (a bug, or a fault nobody foresaw), wrapped so that a
    run reports it and fails like any other; its traceback goes to the run's log only."""

    @classmethod
    def wrap(cls, error: BaseException) -> UnexpectedError:
        detail = " ".join(str(error).split())  # one line, whatever the original holds
        return cls(f"unexpected {type(error).__name__}: {detail}" if detail else f"unexpected {type(error).__name__}")


class InterruptedRunError(WatcherError):
    """The run was asked to stop (signal) before it completed."""

    exit_code = ExitCode.INTERRUPTED


def is_transient(error: BaseException) -> bool:
    """True when retrying the failed operation may succeed."""
    return isinstance(error, TransientError)
