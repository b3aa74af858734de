"""Logging for people and for containers: one line per event, secrets redacted everywhere."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from watcher.private import create_file, make_folders

_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/:@\s]*:)[^@/\s]+@", re.IGNORECASE)
REDACTED = "***"


# A secret this long is masked wherever it appears; a shorter one only where it stands alone (not
# inside a word: "hand***hake" for a secret "s" would show what it is), and one under MASKED_FROM not
# at all: a word like "s" or "ab" is in every message, and watcher never writes a secret itself.
MASKED_ANYWHERE_FROM = 8
MASKED_FROM = 4


def _pattern(secret: str) -> str:
    if len(secret) >= MASKED_ANYWHERE_FROM:
        return re.escape(secret)
    return rf"(?<![^\W_]){re.escape(secret)}(?![^\W_])"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove every known secret, and any password written inside a URL."""
    for secret in sorted((s for s in secrets if len(s) >= MASKED_FROM), key=len, reverse=True):
        text = re.sub(_pattern(secret), REDACTED, text)
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's final text so no secret reaches any handler."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


RUN_LOG_ONLY = {"watcher_run_log_only": True}  # `extra=` of a record the console leaves out


def log_traceback(logger: logging.Logger, error: BaseException) -> None:
    """The traceback of an unexpected error, for the run's log (and the mail): never on the console,
    where the error is one line."""
    logger.error("traceback of the unexpected %s (a bug to report):", type(error).__name__,
                 exc_info=(type(error), error, error.__traceback__), extra=RUN_LOG_ONLY)


def _not_run_log_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "watcher_run_log_only", False)


class UtcFormatter(logging.Formatter):
    """One line per record; `clean` (the CLI gives `text.printable`) rewrites the message only, per
    handler, so that a name with a newline or a terminal escape cannot forge a line on a terminal."""

    converter = time.gmtime

    def __init__(self, clean: Callable[[str], str] | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
        self.clean = clean

    def formatMessage(self, record: logging.LogRecord) -> str:
        if self.clean is None:
            return super().formatMessage(record)
        message = record.message
        record.message = self.clean(message)
        try:
            return super().formatMessage(record)
        finally:
            record.message = message


def setup_console(level: int, secrets: Iterable[str] = (), stream: TextIO | None = None,
                  clean: Callable[[str], str] | None = None) -> RedactingFilter:
    """Log to stderr (stdout stays for command output) or `stream`, redacting `secrets`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_watcher_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._watcher_console = True  # type: ignore[attr-defined]
    handler.setFormatter(UtcFormatter(clean))
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    handler.addFilter(_not_run_log_only)
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))  # run logs record INFO whatever the console shows
    for noisy in ("paramiko", "watchdog", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # paramiko logs each failed handshake at ERROR with its traceback, a line a record; the SFTP backend
    # translates that failure into its own one line, so paramiko's records are never shown.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)
    return redactor


class _RunLogHandler(logging.FileHandler):
    """A run's log on a full or broken state folder is lost, never the run: the first failure to
    write it is said once (on the console), then the handler drops what comes."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            reason = getattr(error, "strerror", None) or error
            logging.getLogger(__name__).warning("the run's log %s cannot be written: %s", self.baseFilename, reason)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            super().close()


def _created(path: Path) -> bool:
    try:
        os.close(create_file(path))
    except FileExistsError:
        return False
    return True


class RunLog:
    """The log of one run, in `<state>/logs/<UTC time>.log`: the mail's attachment.

    Records INFO and above from every module while the run lasts, redacted like the console.
    Only the newest `keep` run logs are kept.
    """

    def __init__(self, folder: Path, secrets: Iterable[str] = (), keep: int = 100,
                 clean: Callable[[str], str] | None = None) -> None:
        self.folder = folder
        self.secrets = list(secrets)
        self.keep = keep
        self.clean = clean
        self.name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.path: Path | None = None
        self.handler: logging.Handler | None = None

    def __enter__(self) -> RunLog:
        try:
            make_folders(self.folder)
            path = self.folder / f"{self.name}.log"
            counter = 1
            while not _created(path):
                path = self.folder / f"{self.name}-{counter}.log"
                counter += 1
            # appends to the 0600 file made above
            handler = _RunLogHandler(path, encoding="utf-8", errors="backslashreplace")
        except OSError as error:
            logging.getLogger(__name__).warning("no run log in %s: %s", self.folder, error.strerror or error)
            return self
        handler.setFormatter(UtcFormatter(self.clean))  # a name (or a traceback) never breaks the file
        handler.addFilter(RedactingFilter(self.secrets))
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        root.addHandler(handler)
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        self.path, self.handler = path, handler
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
            self.handler.close()
        self._prune()

    def text(self) -> str:
        if self.path is None:
            return ""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _prune(self) -> None:
        try:
            logs = sorted(self.folder.glob("*.log"))
            for old in logs[: max(0, len(logs) - self.keep)]:
                old.unlink()
        except OSError:
            return
