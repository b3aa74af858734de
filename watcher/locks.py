"""Repository locks: backups share, `forget` is alone.

A lock is a small object under `locks/`, refreshed while held so that a crashed holder's
lock goes stale (after `STALE_SECONDS`, or at once when its process is known dead on this
host). Deleting data is only safe when no backup is running: a running backup may have
uploaded packs that no index names yet, which `forget` would otherwise take for leftovers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from watcher import fields
from watcher.errors import NotFoundError, RepositoryError, TransientError, WatcherError
from watcher.repository import Repository

log = logging.getLogger(__name__)

STALE_SECONDS = 30 * 60
PID_MAX = 2**31 - 1
REFRESH_SECONDS = 5 * 60


class RepositoryLockedError(RepositoryError, TransientError):
    """Another process holds a conflicting lock; trying again later may succeed."""


@dataclass(frozen=True)
class LockInfo:
    key: str
    host: str
    pid: int
    time: float
    exclusive: bool

    def stale(self, now: float) -> bool:
        if now - self.time > STALE_SECONDS:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def describe(self) -> str:
        kind = "forget" if self.exclusive else "backup or check"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.time))
        return f"a {kind} on {self.host} (pid {self.pid}) since {when}"


def _read(repository: Repository, key: str) -> LockInfo | None:
    try:
        with repository.lock:
            data = fields.mapping(fields.load_json(repository.backend.get_bytes(key)), "lock")
        return LockInfo(key, fields.text(data["host"], "host"), fields.integer(data["pid"], "pid", 1, PID_MAX),
                        fields.number(data["time"], "time", fields.SECONDS_MIN, fields.SECONDS_MAX),
                        fields.boolean(data["exclusive"], "exclusive"))
    except NotFoundError:
        return None  # released meanwhile
    except (ValueError, KeyError) as error:
        log.warning("ignoring an unreadable lock %s: %s", key, fields.reason(error))
        return None


@contextlib.contextmanager
def locked(repository: Repository, *, exclusive: bool) -> Iterator[None]:
    """Hold a lock on the repository; raise RepositoryLockedError if another holder conflicts."""
    host = socket.gethostname()
    name = re.sub(r"[^A-Za-z0-9._-]", "-", host)[:60] or "host"
    key = f"locks/{name}-{os.getpid()}-{secrets.token_hex(4)}"

    def write() -> None:
        document = {"host": host, "pid": os.getpid(), "time": time.time(), "exclusive": exclusive}
        with repository.lock:
            repository.backend.put_bytes(key, json.dumps(document).encode())

    write()
    stop = threading.Event()
    refresher: threading.Thread | None = None
    try:
        now = time.time()
        with repository.lock:
            others = [info.key for info in repository.backend.list("locks") if info.key != key]
        for other in filter(None, (_read(repository, other_key) for other_key in others)):
            if (exclusive or other.exclusive) and not other.stale(now):
                raise RepositoryLockedError(f"the repository is in use by {other.describe()}")

        def refresh() -> None:
            while not stop.wait(REFRESH_SECONDS):
                try:
                    write()
                except WatcherError as error:
                    log.warning("cannot refresh the repository lock: %s", error)

        refresher = threading.Thread(target=refresh, name="lock-refresh", daemon=True)
        refresher.start()
        yield
    finally:
        stop.set()
        if refresher is not None:
            refresher.join(timeout=5)
        try:
            with repository.lock:
                repository.backend.delete(key)
        except WatcherError as error:
            log.warning("cannot remove the repository lock %s: %s", key, error)
