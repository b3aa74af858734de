"""Local state that only saves time: losing it costs re-reading, never correctness.

One SQLite file per repository in `BACKUP_STATE_DIR`:
- `files`: path -> (size, mtime_ns, ctime_ns, inode, chunk ids), so unchanged files are not read;
  the backup still checks that every chunk id is in the repository's index before trusting it.
- `blobs`: copies of immutable index files and tree blobs, checked against their hash on use,
  so listing, diffing and the next backup do not fetch them from the server again.
- `snapshots`: copies of snapshot documents (never modified once written), used only for ids
  the server still lists.

The daemon and a command run by hand may use the same file at once: writes are short
transactions (file entries are buffered and written in batches), the journal is WAL so readers
never wait, and a cache that stays busy or breaks is skipped with a warning, never fatal.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from watcher.private import ensure_file, make_folders

log = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER,
    chunks TEXT, generation INTEGER
);
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, kind TEXT, data BLOB);
CREATE TABLE IF NOT EXISTS snapshots (id TEXT PRIMARY KEY, data BLOB);
CREATE INDEX IF NOT EXISTS files_by_generation ON files (generation);
"""
BUSY_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int


def _tolerant(default: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A cache operation that fails (busy, broken, disk full) returns `default` instead of raising."""

    def wrap(method: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(method)
        def call(self: LocalCache, *args: Any, **kwargs: Any) -> T:
            if self.db is None:
                return default
            try:
                return method(self, *args, **kwargs)
            except sqlite3.Error as error:
                if not self.warned:
                    log.warning("local cache skipped (%s): this run may read more than needed", error)
                    self.warned = True
                return default

        return call

    return wrap


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalCache:
    """The per-repository cache; every failure to use it degrades to 'not cached'."""

    def __init__(self, path: Path | None, digests: dict[str, Callable[[bytes], str]] | None = None) -> None:
        self.db: sqlite3.Connection | None = None
        # How a cached object's id is checked, by kind (default SHA-256: index files as stored, and
        # format 1's trees); an encrypted repository's trees are named by a keyed hash.
        self.digests = digests or {}
        self.warned = False
        self.pending_files: list[tuple[Any, ...]] = []
        self.pending_touches: list[tuple[int, bytes]] = []
        self.pending_blobs: dict[str, tuple[str, str, bytes]] = {}
        self.has_files = False
        self.lock = threading.RLock()  # the upload thread records index files while the scan goes on
        if path is None:
            return
        try:
            make_folders(path.parent)
            ensure_file(path)  # 0600: SQLite gives its -wal and -shm files the same mode
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False,
                                      isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: a crash may lose the last writes, never corrupt the file.
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            # An empty table (first backup, or a cache just lost) needs no look-up per file.
            self.has_files = self.db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is not None
        except (sqlite3.Error, OSError) as error:
            log.warning("local cache %s unusable (%s): every file will be read", path,
                        getattr(error, "strerror", None) or error)
            self.db = None

    def close(self) -> None:
        self.commit()
        if self.db is not None:
            self.db.close()
            self.db = None

    @_tolerant(None)
    def lookup_file(self, path: bytes, state: FileState) -> list[str] | None:
        """The chunk ids recorded for `path` if its state is exactly `state`."""
        assert self.db is not None
        if not self.has_files:
            return None
        row = self.db.execute(
            "SELECT size, mtime_ns, ctime_ns, inode, chunks FROM files WHERE path = ?", (path,)
        ).fetchone()
        if row is None or tuple(row[:4]) != (state.size, state.mtime_ns, state.ctime_ns, state.inode):
            return None
        if not isinstance(row[4], str):
            return None  # a damaged row (SQLite keeps any type in any column): read the file again
        return row[4].split(",") if row[4] else []

    def remember_file(self, path: bytes, state: FileState, chunks: list[str], generation: int) -> None:
        with self.lock:
            self.pending_files.append(
                (path, state.size, state.mtime_ns, state.ctime_ns, state.inode, ",".join(chunks), generation))
            full = len(self.pending_files) >= 5000
        if full:
            self.commit()

    def touch_file(self, path: bytes, generation: int) -> None:
        with self.lock:
            self.pending_touches.append((generation, path))
            full = len(self.pending_touches) >= 5000
        if full:
            self.commit()

    @_tolerant(0)
    def next_generation(self) -> int:
        assert self.db is not None
        row = self.db.execute("SELECT MAX(generation) FROM files").fetchone()
        return (row[0] or 0) + 1

    @_tolerant(None)
    def forget_files_before(self, generation: int) -> None:
        """Drop entries not seen by a full scan (deleted files)."""
        assert self.db is not None
        self.commit()
        self.db.execute("DELETE FROM files WHERE generation < ?", (generation,))

    @_tolerant(None)
    def get_blob(self, blob_id: str) -> bytes | None:
        """A cached immutable object, only if it still matches its id."""
        assert self.db is not None
        with self.lock:
            pending = self.pending_blobs.get(blob_id)
        if pending is not None:
            return pending[2]
        row = self.db.execute("SELECT data, kind FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if row is None:
            return None
        check = self.digests.get(row[1], _sha256)
        if not isinstance(row[0], bytes) or check(row[0]) != blob_id:
            self.db.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
            return None
        return bytes(row[0])

    def put_blob(self, blob_id: str, kind: str, data: bytes) -> None:
        """Buffered: written with the next `commit`."""
        if self.db is None:
            return
        with self.lock:
            self.pending_blobs[blob_id] = (blob_id, kind, data)
            full = len(self.pending_blobs) >= 2000
        if full:
            self.commit()

    @_tolerant(None)
    def drop_blobs_except(self, kind: str, keep: set[str]) -> None:
        assert self.db is not None
        self.commit()
        stored = [row[0] for row in self.db.execute("SELECT id FROM blobs WHERE kind = ?", (kind,))]
        self.db.executemany("DELETE FROM blobs WHERE id = ?", [(i,) for i in stored if i not in keep])

    @_tolerant(None)
    def get_snapshot(self, snapshot_id: str) -> bytes | None:
        assert self.db is not None
        row = self.db.execute("SELECT data FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        return row[0] if row is not None and isinstance(row[0], bytes) else None

    @_tolerant(None)
    def put_snapshot(self, snapshot_id: str, data: bytes) -> None:
        assert self.db is not None
        self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", (snapshot_id, data))

    @_tolerant(None)
    def keep_snapshots(self, listed: set[str]) -> None:
        assert self.db is not None
        stored = [row[0] for row in self.db.execute("SELECT id FROM snapshots")]
        self.db.executemany("DELETE FROM snapshots WHERE id = ?", [(i,) for i in stored if i not in listed])

    @_tolerant(None)
    def commit(self) -> None:
        """Write the buffered file entries, in one short transaction."""
        assert self.db is not None
        with self.lock:
            files, touches, blobs = self.pending_files, self.pending_touches, self.pending_blobs
            self.pending_files, self.pending_touches, self.pending_blobs = [], [], {}
        if not files and not touches and not blobs:
            return
        with self.lock, self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", files)
            self.db.executemany("UPDATE files SET generation = ? WHERE path = ?", touches)
            self.db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", list(blobs.values()))
        if files:
            self.has_files = True
