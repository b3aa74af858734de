"""Local state that only saves time: losing it costs re-reading, never correctness.

One SQLite file per repository in `BACKUP_STATE_DIR`:
- `files`: path -> (size, mtime_ns, ctime_ns, inode, chunk ids), so unchanged files are not read;
  the backup still checks that every chunk id is in the repository's index before trusting it.
- `blobs`: copies of immutable index files and tree blobs, checked against their hash on use,
  so listing, diffing and the next backup do not fetch them from the server again.
- `snapshots`: copies of snapshot documents (never modified once written), used only for ids
  the server still lists.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, inode INTEGER,
    chunks TEXT, generation INTEGER
);
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, kind TEXT, data BLOB);
CREATE TABLE IF NOT EXISTS snapshots (id TEXT PRIMARY KEY, data BLOB);
"""


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int


class LocalCache:
    """The per-repository cache; every failure to use it degrades to 'not cached'."""

    def __init__(self, path: Path | None) -> None:
        self.db: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, check_same_thread=False)
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as error:
            log.warning("local cache %s unusable (%s): every file will be read", path, error)
            self.db = None
        except OSError as error:
            log.warning("local cache %s unusable (%s): every file will be read", path, error.strerror)
            self.db = None

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.commit()
                self.db.close()
            except sqlite3.Error as error:
                log.warning("local cache not saved: %s", error)
            self.db = None

    def lookup_file(self, path: bytes, state: FileState) -> list[str] | None:
        """The chunk ids recorded for `path` if its state is exactly `state`."""
        if self.db is None:
            return None
        row = self.db.execute(
            "SELECT size, mtime_ns, ctime_ns, inode, chunks FROM files WHERE path = ?", (path,)
        ).fetchone()
        if row is None or tuple(row[:4]) != (state.size, state.mtime_ns, state.ctime_ns, state.inode):
            return None
        return row[4].split(",") if row[4] else []

    def remember_file(self, path: bytes, state: FileState, chunks: list[str], generation: int) -> None:
        if self.db is not None:
            self.db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (path, state.size, state.mtime_ns, state.ctime_ns, state.inode, ",".join(chunks), generation),
            )

    def touch_file(self, path: bytes, generation: int) -> None:
        if self.db is not None:
            self.db.execute("UPDATE files SET generation = ? WHERE path = ?", (generation, path))

    def next_generation(self) -> int:
        if self.db is None:
            return 0
        row = self.db.execute("SELECT MAX(generation) FROM files").fetchone()
        return (row[0] or 0) + 1

    def forget_files_before(self, generation: int) -> None:
        """Drop entries not seen by a full scan (deleted files)."""
        if self.db is not None:
            self.db.execute("DELETE FROM files WHERE generation < ?", (generation,))

    def get_blob(self, blob_id: str) -> bytes | None:
        """A cached immutable object, only if it still matches its id."""
        if self.db is None:
            return None
        row = self.db.execute("SELECT data FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if row is None:
            return None
        if hashlib.sha256(row[0]).hexdigest() != blob_id:
            self.db.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
            return None
        return bytes(row[0])

    def put_blob(self, blob_id: str, kind: str, data: bytes) -> None:
        if self.db is not None:
            self.db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?)", (blob_id, kind, data))

    def drop_blobs_except(self, kind: str, keep: set[str]) -> None:
        if self.db is None:
            return
        stored = [row[0] for row in self.db.execute("SELECT id FROM blobs WHERE kind = ?", (kind,))]
        self.db.executemany("DELETE FROM blobs WHERE id = ?", [(i,) for i in stored if i not in keep])

    def get_snapshot(self, snapshot_id: str) -> bytes | None:
        if self.db is None:
            return None
        row = self.db.execute("SELECT data FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_snapshot(self, snapshot_id: str, data: bytes) -> None:
        if self.db is not None:
            self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?)", (snapshot_id, data))

    def keep_snapshots(self, listed: set[str]) -> None:
        if self.db is None:
            return
        stored = [row[0] for row in self.db.execute("SELECT id FROM snapshots")]
        self.db.executemany("DELETE FROM snapshots WHERE id = ?", [(i,) for i in stored if i not in listed])

    def commit(self) -> None:
        if self.db is not None:
            try:
                self.db.commit()
            except sqlite3.Error as error:
                log.warning("local cache not saved: %s", error)
