"""The repository over one backend: key layout, dedup, packs, index, atomic snapshot commit.

Layout (see docs/FORMAT.md):
    config                 format version, id, chunker parameters
    packs/<xx>/<pack id>   blobs packed together; id = SHA-256 of the whole pack
    index/<index id>       which blob is where; id = SHA-256 of the index file
    snapshots/<snap id>    one small JSON document per snapshot, written last

Write order is packs, then the index naming them, then the snapshot: a crash at any point
leaves at worst packs no index names (wasted space, reused by nothing) or an index whose
blobs the next run reuses; never a snapshot naming something missing.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from watcher.backends.base import Backend
from watcher.cache import LocalCache
from watcher.errors import IntegrityError, NotFoundError, RepositoryError, SnapshotNotFoundError
from watcher.pack import PACK_TARGET, BlobEntry, PackBuilder, decode_blob, encode_blob
from watcher.snapshot import Node, Snapshot, decode_snapshot, decode_tree, digest, encode_snapshot

log = logging.getLogger(__name__)

FORMAT_NAME = "watcher-repository"
FORMAT_VERSION = 1
INDEX_EVERY_PACKS = 8
UPLOAD_QUEUE = 2
# What `open` creates: it names the local cache's folder, so nothing else may pass (no `..`, no `/`).
REPOSITORY_ID = re.compile(r"[0-9a-f]{32}")
# The most bytes read for each kind of object (docs/FORMAT.md, "Limits"): the server is not
# trusted, and an object that never ends must not fill memory. A pack is read up to the size its
# index records, which may not exceed PACK_LIMIT (packs are about `pack_size`, 16 MiB, and exceed
# it by one blob at most); one index may name every pack (after `forget`): about 110 bytes a blob.
CONFIG_LIMIT = 64 * 1024
SNAPSHOT_LIMIT = 16 * 1024 * 1024
INDEX_LIMIT = 1024 * 1024 * 1024
PACK_LIMIT = 2 * 1024 * 1024 * 1024
# How many entries a snapshot's tree may expand to: twice what its summary records (event-driven
# runs record only the folders they walked) and a margin, never more than MAX_ENTRIES. Trees name
# subtrees by id, so 48 KB of trees can name one subtree 2^40 times over.
ENTRIES_MARGIN = 1_000_000
MAX_ENTRIES = 1_000_000_000


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 512 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 8 * 1024 * 1024
    normalization: int = 1
    seed: int = 0


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunker: ChunkerParams
    pack_size: int = PACK_TARGET
    compression: str = "none"
    encryption: str = "none"

    def encode(self) -> bytes:
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "id": self.id,
            "created": datetime.now(UTC).isoformat(),
            "hash": "sha256",
            "chunker": {"algorithm": "fastcdc2020", **vars(self.chunker)},
            "pack_size": self.pack_size,
            "compression": self.compression,
            "encryption": self.encryption,
        }
        return json.dumps(document, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        try:
            document = json.loads(data)
            if document.get("format") != FORMAT_NAME:
                raise RepositoryError("the target holds something that is not a watcher repository")
            if document.get("version") != FORMAT_VERSION:
                raise RepositoryError(
                    f"repository format version {document.get('version')} is not supported by this watcher"
                )
            if document.get("encryption", "none") != "none" or document.get("compression", "none") != "none":
                raise RepositoryError("this repository uses encryption or compression this watcher cannot read")
            repository_id = document["id"]
            if not isinstance(repository_id, str) or not REPOSITORY_ID.fullmatch(repository_id):
                raise RepositoryError(f"repository config: the id {str(repository_id)[:40]!r} is not 32 hex digits")
            chunker = {k: v for k, v in document["chunker"].items() if k != "algorithm"}
            return cls(repository_id, ChunkerParams(**chunker), int(document["pack_size"]))
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(f"repository config cannot be read: {error}") from error


def pack_key(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id}"


class Repository:
    """A watcher repository on one backend, with a local cache for immutable objects."""

    def __init__(self, backend: Backend, state_dir: Path | None) -> None:
        self.backend = backend
        self.state_dir = state_dir
        self.config: RepoConfig | None = None
        self.cache = LocalCache(None)
        self.blobs: dict[str, BlobEntry] = {}
        self.packs: dict[str, int] = {}
        self.pack_blobs: dict[str, list[BlobEntry]] = {}
        self.indexes: set[str] = set()
        self.last_index = ""
        self.decoded: dict[str, Snapshot] = {}  # snapshot documents never change: decode each once
        self.entry_counts: dict[str, int] = {}  # tree id -> entries below it (trees never change either)
        self.lock = threading.RLock()

    # -- opening -----------------------------------------------------------------------------

    def open(self, *, create: bool = False, pack_size: int = PACK_TARGET) -> None:
        """Read the repository config, creating the repository if `create` and none exists."""
        try:
            data = self.backend.get_bytes("config", CONFIG_LIMIT)
        except NotFoundError:
            if not create:
                raise RepositoryError(f"no repository at {self.backend.describe()} (run a backup first)") from None
            self.config = RepoConfig(os.urandom(16).hex(), ChunkerParams(), pack_size)
            self.backend.put_bytes("config", self.config.encode())
            log.info("created a new repository at %s", self.backend.describe())
        else:
            self.config = RepoConfig.decode(data)
        if self.state_dir is not None:
            self.cache = LocalCache(self.state_dir / "repos" / self.config.id / "cache.db")

    def close(self) -> None:
        self.cache.close()
        self.backend.close()

    def load_index(self) -> None:
        """Load the index files not loaded yet (from the local cache when it holds them).

        If an index loaded earlier is gone, a `forget` rewrote the index and may have deleted
        packs: everything is read again, so no blob is believed stored that is not.
        """
        listed = {info.key.split("/", 1)[1] for info in self.backend.list("index")}
        if self.indexes - listed:
            self.blobs, self.packs, self.pack_blobs, self.indexes = {}, {}, {}, set()
        for index_id in sorted(listed - self.indexes):
            self._add_index(index_id, self._read_index(index_id))
        self.cache.drop_blobs_except("index", listed)
        self.cache.commit()

    def _read_index(self, index_id: str) -> bytes:
        data = self.cache.get_blob(index_id)
        if data is None:
            data = self.backend.get_bytes(f"index/{index_id}", INDEX_LIMIT)
            if digest(data) != index_id:
                raise IntegrityError(f"index {index_id[:12]} does not match its hash")
            self.cache.put_blob(index_id, "index", data)
        return data

    def _add_index(self, index_id: str, data: bytes) -> None:
        try:
            document = json.loads(data)
            for pack in document["packs"]:
                self.packs[pack["id"]] = int(pack["size"])
                entries = [BlobEntry.from_row(row, pack["id"]) for row in pack["blobs"]]
                self.pack_blobs[pack["id"]] = entries
                for entry in entries:
                    self.blobs.setdefault(entry.id, entry)
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(f"index {index_id[:12]} cannot be read: {error}") from error
        self.indexes.add(index_id)

    # -- reading -----------------------------------------------------------------------------

    def has_blob(self, blob_id: str) -> bool:
        return blob_id in self.blobs

    def pack_size(self, pack_id: str) -> int:
        """The size the index records for a pack: the most ever read of it."""
        size = self.packs.get(pack_id, 0)
        if size > PACK_LIMIT:
            raise IntegrityError(f"pack {pack_id[:12]}: the index says {size} bytes, more than a pack may hold")
        return size

    def locate(self, blob_id: str) -> BlobEntry:
        """Where a blob is: see `placed`."""
        entry = self.blobs.get(blob_id)
        if entry is None:
            raise IntegrityError(f"blob {blob_id[:12]} is in no index")
        return self.placed(entry)

    def placed(self, entry: BlobEntry) -> BlobEntry:
        """`entry`, refused unless it lies within its pack as the index records it (a declared
        length of 10^15 must not become a read, nor an allocation, of that size)."""
        if entry.offset + entry.length > self.pack_size(entry.pack):
            raise IntegrityError(f"blob {entry.id[:12]}: the index places it beyond the end of pack {entry.pack[:12]}")
        return entry

    def read_blob(self, blob_id: str) -> bytes:
        """A blob's content, verified against its id."""
        entry = self.locate(blob_id)
        with self.lock:
            stored = self.backend.read_range(pack_key(entry.pack), entry.offset, entry.length)
        return bytes(decode_blob(stored, entry))

    def check_expansion(self, snapshot: Snapshot, tree_id: str | None = None) -> None:
        """Refuse, before walking it, a snapshot whose tree (or the subtree `tree_id` of it)
        expands to more entries than it may hold; each distinct tree is loaded once here."""
        problem = expansion_problem(snapshot, count_entries(self._children, tree_id or snapshot.tree,
                                                            self.entry_counts))
        if problem:
            raise IntegrityError(problem)

    def _children(self, tree_id: str) -> tuple[int, list[str]]:
        """A tree's number of entries and its folders' trees; a tree that cannot be read counts
        as empty here: the walk that needs it reports it (and a restore goes on without it)."""
        try:
            nodes = self.load_tree(tree_id)
        except (IntegrityError, NotFoundError):
            return 0, []
        return len(nodes), [node.subtree for node in nodes if node.kind == "dir" and node.subtree]

    def load_tree(self, tree_id: str) -> list[Node]:
        data = self.cache.get_blob(tree_id)
        if data is None:
            data = self.read_blob(tree_id)
            self.cache.put_blob(tree_id, "tree", data)
        return decode_tree(data, tree_id)

    def read_pack(self, pack_id: str, *, verify: bool = True) -> bytes:
        """A whole pack; `verify=False` skips the pack's hash when every blob taken from it is checked."""
        limit = self.pack_size(pack_id)
        with self.lock:
            data = self.backend.get_bytes(pack_key(pack_id), limit)
        if verify and digest(data) != pack_id:
            raise IntegrityError(f"pack {pack_id[:12]} does not match its hash")
        return data

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot_ids(self) -> list[str]:
        return sorted(info.key.split("/", 1)[1] for info in self.backend.list("snapshots"))

    def load_snapshot(self, snapshot_id: str, *, cached: bool = False) -> Snapshot:
        """A snapshot document; `cached` allows the local copy (for ids just listed on the server)."""
        data = self.cache.get_snapshot(snapshot_id) if cached else None
        if data is None:
            try:
                data = self.backend.get_bytes(f"snapshots/{snapshot_id}", SNAPSHOT_LIMIT)
            except NotFoundError:
                raise SnapshotNotFoundError(f"snapshot {snapshot_id} not found") from None
            self.cache.put_snapshot(snapshot_id, data)
        return decode_snapshot(snapshot_id, data)

    def list_snapshots(self) -> list[Snapshot]:
        """Every snapshot, oldest first."""
        ids = self.snapshot_ids()
        for snapshot_id in ids:
            if snapshot_id not in self.decoded:
                self.decoded[snapshot_id] = self.load_snapshot(snapshot_id, cached=True)
        snapshots = [self.decoded[snapshot_id] for snapshot_id in ids]
        self.cache.keep_snapshots(set(ids))
        self.cache.commit()
        return sorted(snapshots, key=lambda snapshot: (snapshot.time, snapshot.id))

    def find_snapshot(self, reference: str) -> Snapshot:
        """`latest`, a full id, or a unique prefix of one."""
        ids = self.snapshot_ids()
        if reference == "latest":
            if not ids:
                raise SnapshotNotFoundError("the repository has no snapshot yet")
            return self.list_snapshots()[-1]
        matches = [snapshot_id for snapshot_id in ids if snapshot_id.startswith(reference)]
        if reference in ids:
            matches = [reference]
        if not matches:
            raise SnapshotNotFoundError(f"no snapshot matches {reference!r}")
        if len(matches) > 1:
            raise SnapshotNotFoundError(f"{reference!r} matches {len(matches)} snapshots; give more of the id")
        return self.load_snapshot(matches[0], cached=True)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """The commit point of a backup: written last, atomically, once all it names exists."""
        data = encode_snapshot(snapshot)
        with self.lock:
            self.backend.put_bytes(f"snapshots/{snapshot.id}", data)
        self.cache.put_snapshot(snapshot.id, data)

    # -- writing -----------------------------------------------------------------------------

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def commit_index(self, entries: list[tuple[str, int, list[BlobEntry]]]) -> None:
        document = {
            "version": 1,
            "packs": [
                {"id": pack_id, "size": size, "blobs": [blob.as_row() for blob in blobs]}
                for pack_id, size, blobs in entries
            ],
        }
        data = json.dumps(document, separators=(",", ":")).encode()
        index_id = digest(data)
        with self.lock:
            self.backend.put(f"index/{index_id}", io.BytesIO(data))
        self.cache.put_blob(index_id, "index", data)
        self._add_index(index_id, data)
        self.last_index = index_id


class BlobWriter:
    """Packs new blobs and uploads packs in a background thread while the caller reads files.

    Blobs become part of the index only when their pack is uploaded and an index naming it is
    written (every few packs, and at `finish`), so an interrupted run keeps what it indexed.
    """

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.pack_size = repository.config.pack_size if repository.config else PACK_TARGET
        self.builder = PackBuilder()
        self.pending: set[str] = set()
        self.bytes_added = 0
        self.uploaded: list[tuple[str, int, list[BlobEntry]]] = []
        self.written_packs: set[str] = set()
        self.queue: queue.Queue[PackBuilder | None] = queue.Queue(UPLOAD_QUEUE)
        self.error: BaseException | None = None
        self.on_upload: Callable[[int], None] = lambda size: None
        self.thread = threading.Thread(target=self._upload_loop, name="pack-upload", daemon=True)
        self.thread.start()

    def known(self, blob_id: str) -> bool:
        return blob_id in self.pending or self.repository.has_blob(blob_id)

    def add(self, blob_id: str, blob_type: str, data: bytes | memoryview) -> bool:
        """Store a blob unless the repository already has it; True if it was new."""
        if self.known(blob_id):
            return False
        encoding = "zlib" if blob_type == "tree" else "raw"
        self.add_stored(blob_id, blob_type, encoding, encode_blob(data, encoding))
        return True

    def add_stored(self, blob_id: str, blob_type: str, encoding: str, stored: bytes) -> None:
        """Pack an already encoded blob, even if another pack holds it (how `forget` repacks)."""
        self._raise_upload_error()
        if blob_id in self.pending:
            return
        self.builder.add(blob_id, blob_type, encoding, stored)
        self.pending.add(blob_id)
        self.bytes_added += len(stored)
        if len(self.builder) >= self.pack_size:
            self._seal()

    def _seal(self) -> None:
        if not self.builder.entries:
            return
        builder, self.builder = self.builder, PackBuilder()
        self._put_in_queue(builder)  # finished (header, hash) on the upload thread, beside the scan

    def _put_in_queue(self, item: PackBuilder | None) -> None:
        while True:
            self._raise_upload_error()
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _upload_loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None or self.error is not None:
                if item is None:
                    return
                continue
            try:
                pack_id, data, entries = item.finish()
                with self.repository.lock:
                    self.repository.backend.put(pack_key(pack_id), io.BytesIO(data))
                self.uploaded.append((pack_id, len(data), entries))
                self.written_packs.add(pack_id)
                self.on_upload(len(data))
                if len(self.uploaded) >= INDEX_EVERY_PACKS:
                    self._write_index()
            except BaseException as error:  # handed to the caller's thread by _raise_upload_error
                self.error = error

    def _write_index(self) -> None:
        entries, self.uploaded = self.uploaded, []
        if entries:
            self.repository.commit_index(entries)

    def _raise_upload_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def finish(self) -> None:
        """Upload what is left and index it; after this every added blob is in the repository."""
        self._seal()
        self._put_in_queue(None)
        self.thread.join()
        self._raise_upload_error()
        self._write_index()

    def abort(self) -> None:
        """Stop the upload thread without indexing what it was doing (the run failed)."""
        self.error = self.error or RepositoryError("aborted")
        while self.thread.is_alive():
            try:
                self.queue.put(None, timeout=0.5)
                break
            except queue.Full:
                continue
        self.thread.join(timeout=5)  # a stuck upload must not hold up a stopping daemon


def iter_tree(repository: Repository, tree_id: str, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Every entry below a tree, depth first, with its absolute path; iterative, so any depth
    walks. Unbounded by itself: callers check the snapshot's expansion first."""
    stack = [(prefix, iter(repository.load_tree(tree_id)))]
    while stack:
        where, nodes = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        path = f"{where}/{node.name}"
        yield path, node
        if node.kind == "dir" and node.subtree:
            stack.append((path, iter(repository.load_tree(node.subtree))))


def count_entries(children: Callable[[str], tuple[int, list[str]]], tree_id: str, counts: dict[str, int]) -> int:
    """The entries below `tree_id`, a subtree counted as often as it is named, with each distinct
    tree asked of `children` (its entry count and its folders' trees) once; `counts` memoizes."""
    stack = [tree_id]
    pending: dict[str, tuple[int, list[str]]] = {}
    while stack:
        tree = stack[-1]
        if tree in counts:
            stack.pop()
        elif tree not in pending:
            pending[tree] = children(tree)
            stack.extend(subtree for subtree in pending[tree][1] if subtree not in counts)
        else:
            size, subtrees = pending.pop(tree)
            if any(subtree not in counts for subtree in subtrees):
                raise IntegrityError(f"tree {tree[:12]} contains itself")
            counts[tree] = size + sum(counts[subtree] for subtree in subtrees)
            stack.pop()
    return counts[tree_id]


def expansion_problem(snapshot: Snapshot, entries: int) -> str | None:
    """Why a snapshot whose tree expands to `entries` entries is refused, or None."""
    summary = snapshot.summary
    recorded = sum(count for count in (summary.files, summary.dirs) if isinstance(count, int) and count > 0)
    limit = min(MAX_ENTRIES, 2 * recorded + ENTRIES_MARGIN)
    if entries <= limit:
        return None
    return (f"snapshot {snapshot.id}: its trees expand to {entries} entries, more than the {limit} it may "
            f"hold (its summary records {summary.files} files and {summary.dirs} folders); not walked")
