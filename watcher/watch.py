"""Watching the sources: watchdog events (or polling) into a debouncer of changed paths.

The debouncer is a quiet period with a cap: a batch is due once no change has come for
`quiet` seconds, or `max_delay` seconds after its first change even if changes keep coming
(a file written all day long must still be backed up). Anything that may have lost events
(an overflowed kernel queue, a watch that could not be added, a watched folder removed)
asks for a full rescan instead of staying silent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from watcher.scan import Excluder

log = logging.getLogger(__name__)

NETWORK_FILE_SYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ncpfs", "fuse.rclone",
                        "davfs", "fuse.s3fs", "glusterfs", "ceph", "lustre"}
IGNORED_EVENTS = {"opened", "closed_no_write"}


@dataclass
class Batch:
    """What a run must look at: the changed paths, or everything (`full`)."""

    paths: set[str] = field(default_factory=set)
    full: bool = False
    reasons: list[str] = field(default_factory=list)

    def merge(self, other: Batch) -> None:
        self.paths |= other.paths
        self.full = self.full or other.full
        self.reasons += other.reasons

    def __bool__(self) -> bool:
        return self.full or bool(self.paths)


class Debouncer:
    """Pending changes; due after a quiet period, or at the latest `max_delay` after the first."""

    def __init__(self, quiet: float, max_delay: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self.max_delay = max(max_delay, quiet)
        self.clock = clock
        self.lock = threading.Lock()
        self.batch = Batch()
        self.first: float | None = None
        self.last: float | None = None

    def add(self, paths: Iterable[str] = (), *, full: bool = False, reason: str = "") -> None:
        now = self.clock()
        with self.lock:
            self.batch.paths.update(paths)
            if full:
                self.batch.full = True
                if reason:
                    self.batch.reasons.append(reason)
            if self.batch:
                self.first = now if self.first is None else self.first
                self.last = now

    def due_in(self) -> float | None:
        """Seconds until the pending batch is due (0 if due now); None if nothing is pending."""
        with self.lock:
            if self.first is None or self.last is None:
                return None
            now = self.clock()
            due = min(self.last + self.quiet, self.first + self.max_delay)
            return max(0.0, due - now)

    def take(self) -> Batch:
        with self.lock:
            batch, self.batch = self.batch, Batch()
            self.first = self.last = None
            return batch

    def pending(self) -> Batch:
        with self.lock:
            return Batch(set(self.batch.paths), self.batch.full, list(self.batch.reasons))


def file_system_type(path: Path) -> str:
    """The type of the file system holding `path`, from /proc/mounts (longest mount point)."""
    best, kind = "", ""
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                if (str(path) == point or str(path).startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                    best, kind = point, parts[2]
    except OSError:
        return ""
    return kind


def choose_mode(mode: str, source: Path) -> str:
    """`events` or `poll` for one source; `auto` polls network file systems, where no events come."""
    if mode != "auto":
        return mode
    return "poll" if file_system_type(source) in NETWORK_FILE_SYSTEMS else "events"


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: SourceWatcher, source: str) -> None:
        self.watcher = watcher
        self.source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in IGNORED_EVENTS:
            return
        if event.is_directory and event.event_type == "modified":
            # "An entry of this folder changed": that entry's own event names it (and is
            # dropped if excluded); the folder's new mtime goes with the next run.
            return
        paths = [os.fsdecode(event.src_path)]
        if getattr(event, "dest_path", ""):
            paths.append(os.fsdecode(event.dest_path))
        if event.event_type == "deleted" and paths[0] == self.source:
            self.watcher.lost(self.source, "the watched folder was removed", rewatch=True)
            return
        kept = [path for path in paths if not self.watcher.is_excluded(self.source, path, event.is_directory)]
        if kept:
            self.watcher.debouncer.add(kept)


class _LostEvents(logging.Handler):
    """watchdog reports a lost event queue or a failed watch only in its log: turn it into a rescan."""

    def __init__(self, watcher: SourceWatcher) -> None:
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        self.watcher.debouncer.add(full=True, reason=f"watchdog: {record.getMessage()}")


class SourceWatcher:
    """One observer per source folder, events or polling; changed paths go to the debouncer."""

    def __init__(self, sources: tuple[Path, ...], excluder: Excluder, mode: str, debouncer: Debouncer,
                 poll_seconds: float = 5.0) -> None:
        self.sources = sources
        self.excluder = excluder
        self.mode = mode
        self.debouncer = debouncer
        self.poll_seconds = poll_seconds
        self.observers: dict[str, BaseObserver] = {}
        self.identities: dict[str, tuple[int, int] | None] = {}
        self.rewatch: set[str] = set()
        self.lock = threading.Lock()
        self.log_handler = _LostEvents(self)

    def is_excluded(self, source: str, path: str, is_directory: bool) -> bool:
        if path == source or not path.startswith(source + "/"):
            return path != source
        return self.excluder.excluded(path, os.path.relpath(path, source), is_directory)

    def start(self) -> None:
        logging.getLogger("watchdog").addHandler(self.log_handler)
        for source in self.sources:
            self._watch(str(source))

    def _watch(self, source: str) -> None:
        mode = choose_mode(self.mode, Path(source))
        observer: BaseObserver = PollingObserver(timeout=self.poll_seconds) if mode == "poll" else Observer()
        try:
            observer.schedule(_Handler(self, source), source, recursive=True)
            observer.start()
        except OSError as error:
            observer.stop()
            if mode == "poll":
                log.error("cannot watch %s (%s): only the periodic rescan will see its changes", source,
                          error.strerror or error)
                self.identities[source] = None
                return
            log.warning("cannot watch %s with events (%s); polling it every %.0f s instead", source,
                        error.strerror or error, self.poll_seconds)
            self.debouncer.add(full=True, reason=f"events unavailable for {source}")
            observer = PollingObserver(timeout=self.poll_seconds)
            observer.schedule(_Handler(self, source), source, recursive=True)
            observer.start()
        self.observers[source] = observer
        self.identities[source] = _identity(source)
        log.info("watching %s (%s)", source, "polling" if isinstance(observer, PollingObserver) else "events")

    def lost(self, source: str, reason: str, rewatch: bool = False) -> None:
        log.warning("%s: %s; a full rescan follows", source, reason)
        if rewatch:
            with self.lock:
                self.rewatch.add(source)
        self.debouncer.add(full=True, reason=f"{source}: {reason}")

    def _healthy(self, source: str, identity: tuple[int, int]) -> bool:
        observer = self.observers.get(source)
        if observer is None or not observer.is_alive() or identity != self.identities.get(source):
            return False
        with self.lock:
            if source in self.rewatch:
                return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def check(self) -> None:
        """Notice a source whose folder went (removed, moved away, unmounted: a moved folder's watch
        would follow it and report its new place's changes under the old name), and re-watch one
        that is back, or whose watch stopped."""
        for source in map(str, self.sources):
            identity = _identity(source)
            if identity is None:
                observer = self.observers.pop(source, None)
                if observer is not None:
                    self._stop(observer)
                    with self.lock:
                        reported = source in self.rewatch  # its removal's event said so already
                    if not reported:
                        self.lost(source, "the watched folder is gone (moved away, removed or unmounted)",
                                  rewatch=True)
                continue  # re-watched once it is back
            if self._healthy(source, identity):
                continue
            observer = self.observers.pop(source, None)
            if observer is not None:
                self._stop(observer)
            with self.lock:
                was_lost = source in self.rewatch
                self.rewatch.discard(source)
            if observer is not None or was_lost:
                self.lost(source, "the watched folder is back or its watch stopped; watching it again")
            self._watch(source)

    @staticmethod
    def _stop(observer: BaseObserver) -> None:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)

    def stop(self) -> None:
        logging.getLogger("watchdog").removeHandler(self.log_handler)
        for observer in self.observers.values():
            observer.stop()
        for observer in self.observers.values():
            if observer.is_alive():
                observer.join(timeout=5)
        self.observers.clear()


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
