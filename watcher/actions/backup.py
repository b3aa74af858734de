"""One backup run: walk the sources, store what is new, commit one snapshot.

Change detection has two layers: the local cache answers "was this file read before, with
exactly this size, mtime, ctime and inode?" (so unchanged files are not read), and the
repository's index answers "is that content really stored?" (so a stale or foreign cache can
cost time, never correctness). The previous snapshot of the same host and sources is walked
alongside, to count new, changed, unchanged and removed files and to see when nothing changed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from watcher.errors import InterruptedRunError
from watcher.repository import BlobWriter, Repository
from watcher.scan import ChangedWhileReading, ChunkReader, Excluder, file_state
from watcher.snapshot import Node, Snapshot, Summary, digest, encode_tree, new_snapshot_id

log = logging.getLogger(__name__)

# The cache never records a file modified this close to the scan: file times tick coarsely
# (a few ms), so a write just after our read could leave the same mtime (git's "racy" files).
RACY_SECONDS = 1


@dataclass(frozen=True)
class BackupOptions:
    sources: tuple[Path, ...]
    exclude: tuple[str, ...] = ()
    host: str = ""
    never_back_up: tuple[str, ...] = ()


@dataclass
class BackupResult:
    snapshot: Snapshot | None
    summary: Summary
    parent: Snapshot | None
    warnings: list[str] = field(default_factory=list)


class Progress:
    """What a backup reports as it goes; the CLI turns it into a progress bar on a terminal."""

    def file_done(self, path: str, size: int) -> None:
        pass

    def bytes_read(self, size: int) -> None:
        pass


@dataclass
class _Counts:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    bytes_read: int = 0


class _Run:
    def __init__(
        self,
        repository: Repository,
        writer: BlobWriter,
        options: BackupOptions,
        progress: Progress,
        stop: threading.Event | None,
    ) -> None:
        assert repository.config is not None
        params = repository.config.chunker
        self.repository = repository
        self.cache = repository.cache
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.reader = ChunkReader(params.min_size, params.avg_size, params.max_size, params.normalization, params.seed)
        self.excluder = Excluder(options.exclude, options.never_back_up)
        self.counts = _Counts()
        self.warnings: list[str] = []
        self.generation = self.cache.next_generation()
        self.racy_after_ns = time.time_ns() - RACY_SECONDS * 1_000_000_000

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def _store_chunk(self, chunk_id: str, data: memoryview | bytes) -> None:
        self.writer.add(chunk_id, "data", data)
        self.counts.bytes_read += len(data)
        self.progress.bytes_read(len(data))

    def _previous_entries(self, previous: Node | None) -> dict[str, Node]:
        if previous is None or previous.kind != "dir" or not previous.subtree:
            return {}
        return {node.name: node for node in self.repository.load_tree(previous.subtree)}

    def _count_removed(self, node: Node) -> None:
        if node.kind != "dir":
            self.counts.removed += 1
            return
        for child in self._previous_entries(node).values():
            self._count_removed(child)

    def store_tree(self, nodes: list[Node]) -> str:
        data = encode_tree(nodes)
        tree_id = digest(data)
        if self.writer.add(tree_id, "tree", data):
            self.cache.put_blob(tree_id, "tree", data)
        return tree_id

    def scan_dir(self, path: str, source: str, previous: Node | None) -> str | None:
        """Store the tree of folder `path`; None when the folder cannot be listed."""
        if self.stop is not None and self.stop.is_set():
            raise InterruptedRunError("backup interrupted")
        try:
            with os.scandir(path) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except OSError as error:
            self.warn(f"cannot read folder {path}: {error.strerror or error}")
            return None
        before = self._previous_entries(previous)
        nodes = []
        for entry in entries:
            node = self.scan_entry(entry.path, entry.name, source, before.get(entry.name))
            if node is not None:
                nodes.append(node)
        present = {node.name for node in nodes}
        for name, gone in before.items():
            if name not in present:
                self._count_removed(gone)
        return self.store_tree(nodes)

    def scan_entry(self, path: str, name: str, source: str, previous: Node | None) -> Node | None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None  # deleted since the folder was listed: it is simply not in this snapshot
        except OSError as error:
            self.warn(f"cannot read {path}: {error.strerror or error}")
            return None
        is_dir = stat.S_ISDIR(st.st_mode)
        if self.excluder.excluded(path, os.path.relpath(path, source), is_dir):
            return None
        if is_dir:
            return self.dir_node(path, name, st, source, previous)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except OSError as error:
                self.warn(f"cannot read link {path}: {error.strerror or error}")
                return None
            return self._classify(Node(name, "symlink", stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                                       st.st_uid, st.st_gid, target=target), previous)
        if stat.S_ISREG(st.st_mode):
            return self.file_node(path, name, st, previous)
        log.info("skipping %s: not a file, folder or symlink", path)
        return None

    def dir_node(self, path: str, name: str, st: os.stat_result, source: str, previous: Node | None) -> Node | None:
        subtree = self.scan_dir(path, source, previous)
        if subtree is None:
            return None
        self.counts.dirs += 1
        return Node(name, "dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid, subtree=subtree)

    def file_node(self, path: str, name: str, st: os.stat_result, previous: Node | None) -> Node | None:
        key = os.fsencode(path)
        state = file_state(st)
        chunks = self.cache.lookup_file(key, state)
        if chunks is not None and all(self.writer.known(chunk) for chunk in chunks):
            self.cache.touch_file(key, self.generation)
        else:
            try:
                result = self.reader.read(path, self._store_chunk)
            except FileNotFoundError:
                return None
            except ChangedWhileReading as error:
                self.warn(f"not stored: {path} {error}")
                return None
            except OSError as error:
                self.warn(f"cannot read {path}: {error.strerror or error}")
                return None
            st, chunks = result.stat, result.chunks
            if st.st_mtime_ns < self.racy_after_ns:
                self.cache.remember_file(key, file_state(st), chunks, self.generation)
        self.counts.files += 1
        self.counts.bytes += st.st_size
        self.progress.file_done(path, st.st_size)
        node = Node(name, "file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid,
                    size=st.st_size, content=tuple(chunks))
        return self._classify(node, previous)

    def _classify(self, node: Node, previous: Node | None) -> Node:
        if node.kind == "symlink":
            self.counts.files += 1
        if previous is None or previous.kind == "dir":
            self.counts.new += 1
            if previous is not None:
                self._count_removed(previous)
        elif previous == node:
            self.counts.unchanged += 1
        else:
            self.counts.changed += 1
        return node


def _ancestor_nodes(run: _Run, sources: list[str], previous_root: dict[str, Node]) -> list[Node]:
    """The root folder's entries: the chain of parent folders down to each source."""
    children: dict[str, list[str]] = {}
    for source in sources:
        head, _, tail = source.strip("/").partition("/")
        children.setdefault(head, []).append(tail)
    nodes = []
    for name, rests in sorted(children.items()):
        path = "/" + name
        node = _ancestor(run, path, name, [rest for rest in rests if rest], "" in rests, previous_root.get(name))
        if node is not None:
            nodes.append(node)
    return nodes


def _ancestor(run: _Run, path: str, name: str, rests: list[str], is_source: bool, previous: Node | None) -> Node | None:
    try:
        st = os.stat(path)  # a source given as a symlink to a folder is backed up as that folder
    except OSError as error:
        run.warn(f"cannot read source {path}: {error.strerror or error}")
        return None
    if is_source:
        return run.dir_node(path, name, st, path, previous)
    before = run._previous_entries(previous)
    grouped: dict[str, list[str]] = {}
    for rest in rests:
        head, _, tail = rest.partition("/")
        grouped.setdefault(head, []).append(tail)
    nodes = []
    for child, child_rests in sorted(grouped.items()):
        node = _ancestor(run, f"{path}/{child}", child, [r for r in child_rests if r], "" in child_rests,
                         before.get(child))
        if node is not None:
            nodes.append(node)
    tree = run.store_tree(nodes)
    return Node(name, "dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid, subtree=tree)


def find_parent(repository: Repository, host: str, sources: tuple[str, ...]) -> Snapshot | None:
    """The newest snapshot of the same host and sources: what this run is compared with."""
    for snapshot in reversed(repository.list_snapshots()):
        if snapshot.host == host and tuple(sorted(snapshot.sources)) == tuple(sorted(sources)):
            return snapshot
    return None


def run_backup(
    repository: Repository,
    options: BackupOptions,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupResult:
    """Back up `options.sources` into an opened repository whose index is loaded."""
    started = time.monotonic()
    moment = clock()
    sources = tuple(str(source) for source in options.sources)
    parent = find_parent(repository, options.host, sources)
    writer = repository.writer()
    run = _Run(repository, writer, options, progress or Progress(), stop)
    try:
        previous_root = {node.name: node for node in repository.load_tree(parent.tree)} if parent else {}
        root = run.store_tree(_ancestor_nodes(run, list(sources), previous_root))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        run.cache.commit()
    counts = run.counts
    summary = Summary(
        **vars(counts),
        bytes_added=writer.bytes_added,
        warnings=len(run.warnings),
        duration_seconds=round(time.monotonic() - started, 3),
    )
    if parent is not None and parent.tree == root:
        return BackupResult(None, summary, parent, run.warnings)
    snapshot = Snapshot(new_snapshot_id(moment), moment, options.host, sources, root,
                        parent.id if parent else None, summary)
    repository.save_snapshot(snapshot)
    if not run.warnings:
        run.cache.forget_files_before(run.generation)
    run.cache.commit()
    summary = replace(summary, duration_seconds=round(time.monotonic() - started, 3))
    return BackupResult(snapshot, summary, parent, run.warnings)
