"""Logging for people and for containers: one line per event, secrets redacted everywhere."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterable

_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/:@\s]*:)[^@/\s]+@", re.IGNORECASE)
REDACTED = "***"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove every known secret, and any password written inside a URL."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
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


class UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%SZ")


def setup_console(level: int, secrets: Iterable[str] = ()) -> RedactingFilter:
    """Log to stderr (stdout stays for command output), redacting `secrets`."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_watcher_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._watcher_console = True  # type: ignore[attr-defined]
    handler.setFormatter(UtcFormatter())
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("paramiko", "watchdog"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return redactor
