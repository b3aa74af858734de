"""Shared test set-up: a clean environment, and no test may leak a thread."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import pytest

_PREFIXES = ("BACKUP_", "SMTP_", "MAIL_", "AWS_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No developer setting leaks into a test; no test reads a stray ./.env."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    yield


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Operation retries without real waits (the retry tests pass their own policies)."""
    from watcher import retry

    monkeypatch.setattr(retry, "DEFAULT_POLICY", retry.RetryPolicy(attempts=3, initial_seconds=0.01, max_seconds=0.02))


@pytest.fixture(autouse=True)
def console_handlers_removed() -> Iterator[None]:
    """`cli.main` installs a console handler per call; do not let them pile up across tests."""
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_watcher_console", False):
            root.removeHandler(handler)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = threading.Event()
    for _ in range(50):
        new = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        leaked = [t for t in new if not t.daemon or t.name.startswith("pack-upload")]
        if not leaked:
            return
        deadline.wait(0.1)
    pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")


pytest_plugins = ["tests.fixtures.smtp", "tests.fixtures.sftp", "tests.fixtures.ftp", "tests.fixtures.s3"]
