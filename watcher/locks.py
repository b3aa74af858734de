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

Rule 3 compares another host's clock with ours, and a live holder whose refreshes did not get
through (its machine asleep, its link down, the process stopped) ages like a dead one. So a holder
does not trust its lock blindly: its `Lease` measures, on its own clock, the gaps between the
refreshes that got through. Only while none exceeded LEASE_SECONDS (half of STALE_SECONDS: the other
half is for clocks that differ, and for the last step) may it do what a stale judgement would make
unsafe: a backup save its snapshot, a `forget` delete data.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watcher import fields
from watcher.errors import NotFoundError, RepositoryError, TransientError, WatcherError
from watcher.repository import Repository

log = logging.getLogger(__name__)

STALE_SECONDS = 30 * 60
PID_MAX = 2**31 - 1
REFRESH_SECONDS = 5 * 60
# A refresh that failed is tried again this soon, not a whole REFRESH_SECONDS later.
REFRESH_RETRY_SECONDS = 30
# The longest a holder goes without a refresh that got through and still trusts its lock. A judge
# takes a lock for stale when its `time` is STALE_SECONDS old by the judge's clock: with every gap
# below LEASE_SECONDS, that needs the judge's clock more than STALE_SECONDS - LEASE_SECONDS (15
# minutes, less the last step's few seconds) ahead of the holder's.
LEASE_SECONDS = 15 * 60
_HOLDER_ID = re.compile(r"[0-9a-f]{32}")

# The keys of the locks this process holds: from before each is written until after it is deleted.
_held_keys: set[str] = set()
_held_keys_lock = threading.Lock()


class RepositoryLockedError(RepositoryError, TransientError):
    """Another process holds a conflicting lock; trying again later may succeed."""


class LockExpiredError(RepositoryError, TransientError):
    """This process's lock went unrefreshed so long that another host may have taken it for stale."""


def _boottime() -> float:
    """Seconds on a clock that no one sets and that counts a suspended machine's sleep (Linux's
    CLOCK_BOOTTIME; CLOCK_MONOTONIC stops during suspend, and a laptop that slept an hour in the
    middle of a backup must see that hour)."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


# This process's clock for lease gaps; tests replace it with a fake one.
lease_clock: Callable[[], float] = _boottime


class Lease:
    """Whether this process's lock has been refreshed without a long gap since it was taken.

    `written` is this process's clock when the document last stored was made (its `time` was
    taken then); `longest_gap` the longest wait between two such documents."""

    def __init__(self, write: Callable[[], None]) -> None:
        self._write = write
        self._guard = threading.Lock()
        self.written: float | None = None
        self.longest_gap = 0.0

    def stamp(self, made: float) -> None:
        """A document made at `made` (this process's clock) got stored."""
        with self._guard:
            if self.written is not None:
                self.longest_gap = max(self.longest_gap, made - self.written)
            self.written = made if self.written is None else max(self.written, made)

    def gap(self) -> float:
        """The longest wait without a stored refresh, counting the one still going on."""
        with self._guard:
            if self.written is None:
                return float("inf")
            return max(self.longest_gap, lease_clock() - self.written)

    def confirm(self) -> None:
        """Raise LockExpiredError unless every gap so far stayed within LEASE_SECONDS (no I/O)."""
        gap = self.gap()
        if gap > LEASE_SECONDS:
            raise LockExpiredError(
                f"the repository lock went {gap / 60:.0f} minutes without a refresh (this machine asleep, "
                f"the target out of reach): another host may have taken it for stale and removed data, so "
                "this step is not taken; the next attempt starts afresh")

    def renew(self) -> None:
        """Store a fresh refresh now, then `confirm`: the step that follows has a whole lease ahead."""
        self._write()
        self.confirm()


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
def locked(repository: Repository, *, exclusive: bool) -> Iterator[Lease]:
    """Hold a lock on the repository; raise RepositoryLockedError if another holder conflicts.

    Yields the `Lease`: a holder confirms it before a step that is unsafe should its lock have been
    taken for stale meanwhile."""
    host = socket.gethostname()
    name = re.sub(r"[^A-Za-z0-9._-]", "-", host)[:60] or "host"
    key = f"locks/{name}-{os.getpid()}-{secrets.token_hex(4)}"
    holder = _HolderFile(repository.state_dir)
    boot_id, pid_namespace = this_kernel()

    def write() -> None:
        made = lease_clock()
        document = {"host": host, "pid": os.getpid(), "time": time.time(), "exclusive": exclusive,
                    "holder": holder.id, "boot_id": boot_id, "pid_namespace": pid_namespace}
        with repository.lock:
            repository.backend.put_bytes(key, json.dumps(document).encode())
        lease.stamp(made)

    lease = Lease(write)

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
            wait = REFRESH_SECONDS
            while not stop.wait(wait):
                try:
                    write()
                    wait = REFRESH_SECONDS
                except WatcherError as error:
                    log.warning("cannot refresh the repository lock: %s", error)
                    wait = REFRESH_RETRY_SECONDS

        refresher = threading.Thread(target=refresh, name="lock-refresh", daemon=True)
        refresher.start()
        yield lease
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
