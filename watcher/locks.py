"""Repository locks: backups share, `forget` is alone.

A lock is a small object under `locks/`, refreshed while held. Deleting data is only safe when no
backup is running: a running backup may have uploaded packs that no index names yet, which
`forget` would otherwise take for leftovers. So a lock must never be taken for stale while its
holder lives, and a dead holder's lock should not block `forget` for long.

A host name and a pid do not say who holds a lock: containers share host names, and a pid means
something only in its own PID namespace (pid 1 is alive in every one). So each holder also keeps
an OS lock (`flock`) on a file named by a random holder id in its state folder for as long as it
holds the repository lock, and records that id with the kernel's boot id and its PID namespace.
Another process judges the holder, most certain way first:
1. the holder's file is in its own state folder (the same folder, as containers sharing a state
   volume have it) on the same kernel or host: alive exactly while the file's flock is taken;
2. same kernel (boot id) and same PID namespace: alive while its pid exists, except that a lock
   with this host name and this process's own pid that this process does not hold is dead: it is
   a predecessor's (a container's daemon has the same small pid in every incarnation, and the
   kernel reuses a dead PID namespace's number), and its pid exists only because it is ours;
3. otherwise only the age of the last refresh decides (see docs/FORMAT.md on clocks).
A holder proven dead (1 or 2) has its lock removed; one judged by age is only ignored.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
from pathlib import Path

from watcher import fields
from watcher.errors import NotFoundError, RepositoryError, TransientError, WatcherError
from watcher.repository import Repository

log = logging.getLogger(__name__)

STALE_SECONDS = 30 * 60
PID_MAX = 2**31 - 1
REFRESH_SECONDS = 5 * 60
_HOLDER_ID = re.compile(r"[0-9a-f]{32}")

# The keys of the locks this process holds: from before each is written until after it is deleted.
_held_keys: set[str] = set()
_held_keys_lock = threading.Lock()


class RepositoryLockedError(RepositoryError, TransientError):
    """Another process holds a conflicting lock; trying again later may succeed."""


def this_kernel() -> tuple[str, str]:
    """(boot id, PID namespace) of this process; empty where /proc does not tell (never equal).

    Read each time (two small reads per lock): a child forked after `unshare` is in another namespace."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    try:
        pid_namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_namespace = ""
    return boot_id, pid_namespace


def _holder_path(state_dir: Path, holder: str) -> Path:
    return state_dir / "locks" / holder


@dataclass(frozen=True)
class LockInfo:
    key: str
    host: str
    pid: int
    time: float
    exclusive: bool
    holder: str = ""
    boot_id: str = ""
    pid_namespace: str = ""

    def alive(self, state_dir: Path | None) -> bool | None:
        """Whether the holder lives: True or False when this process can know, else None."""
        boot_id, pid_namespace = this_kernel()
        same_kernel = bool(self.boot_id) and self.boot_id == boot_id
        # The flock speaks only for this kernel: a state folder shared over the network with another
        # machine (of the same name, even) may keep its locks local, and a live holder there would
        # look dead here. After a reboot the lock waits for its age instead.
        if state_dir is not None and self.holder and same_kernel:
            held = _flock_held(_holder_path(state_dir, self.holder))
            if held is not None:
                return held
        if same_kernel and bool(self.pid_namespace) and self.pid_namespace == pid_namespace:
            if self.pid == os.getpid() and self.host == socket.gethostname():
                with _held_keys_lock:
                    return self.key in _held_keys  # if not ours, the pid is ours: its holder has ended
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return None

    def describe(self) -> str:
        kind = "forget, key change or repository creation" if self.exclusive else "backup or check"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.time))
        return f"a {kind} on {self.host} (pid {self.pid}) since {when}"


def _flock_held(path: Path) -> bool | None:
    """Whether another open file holds the flock of `path`; None when there is no such file here."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # not in this state folder (or it cannot be read): judge otherwise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None  # a file system without flock
    finally:
        os.close(fd)
    return False


def _decode(key: str, data: bytes) -> LockInfo:
    document = fields.mapping(fields.load_json(data), "lock")
    # pid above 0: kill(0) or kill(-1) would probe whole process groups
    pid = fields.integer(document["pid"], "pid", 1, PID_MAX)
    extra = {name: fields.text(document.get(name, ""), name) for name in ("holder", "boot_id", "pid_namespace")}
    if not _HOLDER_ID.fullmatch(extra["holder"]):
        extra["holder"] = ""  # it names a file in our state folder: only our own form is used
    return LockInfo(key, fields.text(document["host"], "host"), pid,
                    fields.number(document["time"], "time", fields.SECONDS_MIN, fields.SECONDS_MAX),
                    fields.boolean(document["exclusive"], "exclusive"), **extra)


def _read(repository: Repository, key: str) -> LockInfo | None:
    try:
        with repository.lock:
            return _decode(key, repository.backend.get_bytes(key))
    except NotFoundError:
        return None  # released meanwhile
    except (ValueError, KeyError) as error:
        log.warning("ignoring an unreadable lock %s: %s", key, fields.reason(error))
        return None


class _HolderFile:
    """This process's flocked holder file, kept from before the lock is written until after it is gone."""

    def __init__(self, state_dir: Path | None) -> None:
        self.id = ""
        self.path: Path | None = None
        self.fd: int | None = None
        if state_dir is None:
            return
        holder = secrets.token_hex(16)
        path = _holder_path(state_dir, holder)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            log.warning("cannot keep a lock file in %s (%s): others judge this lock by pid and age only",
                        path.parent, error.strerror or error)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            _unlink_quietly(path)
            log.warning("cannot lock %s (%s): others judge this lock by pid and age only", path,
                        error.strerror or errno.errorcode.get(error.errno or 0, error))
            return
        self.id, self.path, self.fd = holder, path, fd

    def release(self, lock_removed: bool) -> None:
        """Drop the flock; the file goes only with the lock, so a lock left behind is judged dead at once."""
        if self.path is not None and lock_removed:
            _unlink_quietly(self.path)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _remove_dead(repository: Repository, lock: LockInfo) -> None:
    """A holder proven dead: its lock goes, then its holder file (if it is ours to see)."""
    try:
        with repository.lock:
            repository.backend.delete(lock.key)
    except NotFoundError:
        pass  # removed by another process meanwhile
    except WatcherError as error:
        log.warning("cannot remove the dead lock %s: %s", lock.key, error)
        return
    log.info("removed the lock of %s: that process has ended", lock.describe())
    if repository.state_dir is not None and lock.holder:
        _unlink_quietly(_holder_path(repository.state_dir, lock.holder))


@contextlib.contextmanager
def locked(repository: Repository, *, exclusive: bool) -> Iterator[None]:
    """Hold a lock on the repository; raise RepositoryLockedError if another holder conflicts."""
    host = socket.gethostname()
    name = re.sub(r"[^A-Za-z0-9._-]", "-", host)[:60] or "host"
    key = f"locks/{name}-{os.getpid()}-{secrets.token_hex(4)}"
    holder = _HolderFile(repository.state_dir)
    boot_id, pid_namespace = this_kernel()

    def write() -> None:
        document = {"host": host, "pid": os.getpid(), "time": time.time(), "exclusive": exclusive,
                    "holder": holder.id, "boot_id": boot_id, "pid_namespace": pid_namespace}
        with repository.lock:
            repository.backend.put_bytes(key, json.dumps(document).encode())

    stop = threading.Event()
    refresher: threading.Thread | None = None
    removed = False
    with _held_keys_lock:
        _held_keys.add(key)
    try:
        write()
        now = time.time()
        with repository.lock:
            others = [info.key for info in repository.backend.list("locks") if info.key != key]
        for other in filter(None, (_read(repository, other_key) for other_key in others)):
            alive = other.alive(repository.state_dir)
            if alive is False:
                _remove_dead(repository, other)
            elif (exclusive or other.exclusive) and (alive or now - other.time <= STALE_SECONDS):
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
            removed = True
        except NotFoundError:
            removed = True
        except WatcherError as error:
            log.warning("cannot remove the repository lock %s: %s", key, error)
        with _held_keys_lock:
            _held_keys.discard(key)
        holder.release(removed)
