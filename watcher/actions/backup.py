"""One backup run: walk the sources (or only what changed), store what is new, commit one snapshot.

Change detection has two layers: the local cache answers "was this file read before, with
exactly this size, mtime, ctime and inode?" (so unchanged files are not read), and the
repository's index answers "is that content really stored?" (so a stale or foreign cache can
cost time, never correctness). The previous snapshot of the same host and sources is walked
alongside, to count new, changed, unchanged and removed files and to see when nothing changed.

Given the set of paths that changed (from file system events), a run lists only the folders
on the way to those paths and takes everything else from the previous snapshot, so its cost
follows the size of the change, not the size of the tree.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from watcher.errors import InterruptedRunError
from watcher.repository import BlobWriter, Repository
from watcher.scan import ChangedWhileReading, ChunkReader, Excluder, file_state
from watcher.snapshot import Node, Snapshot, Summary, dated_in_future, digest, encode_tree, new_snapshot_id

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
    full_scan: bool = True


class Progress:
    """What a backup reports as it goes; the CLI turns it into a progress bar on a terminal."""

    def file_done(self, path: str, size: int) -> None:
        pass

    def bytes_read(self, size: int) -> None:
        pass


class ChangedPaths:
    """The paths events reported, and the folders on the way to them.

    `touches(path)` is true when `path` itself changed, lies on the way to a change (its
    listing must be read again), or lies below a changed folder (a folder moved in).
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = {os.path.normpath(path) for path in paths}
        self.on_the_way: set[str] = set()
        for path in self.paths:
            parent = os.path.dirname(path)
            while parent not in self.on_the_way and parent != path:
                self.on_the_way.add(parent)
                path, parent = parent, os.path.dirname(parent)

    def touches(self, path: str) -> bool:
        if path in self.paths or path in self.on_the_way:
            return True
        parent = os.path.dirname(path)
        while parent != path:
            if parent in self.paths:
                return True
            path, parent = parent, os.path.dirname(parent)
        return False


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
    bytes_delta: int = 0
    files_delta: int = 0


class _Run:
    def __init__(self, repository: Repository, writer: BlobWriter, options: BackupOptions, progress: Progress,
                 stop: threading.Event | None, changed: ChangedPaths | None) -> None:
        assert repository.config is not None
        params = repository.config.chunker
        self.repository = repository
        self.cache = repository.cache
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.changed = changed
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
        if self.stop is not None and self.stop.is_set():
            raise InterruptedRunError("backup interrupted")
        self.writer.add(chunk_id, "data", data)
        self.counts.bytes_read += len(data)
        self.progress.bytes_read(len(data))

    def previous_entries(self, previous: Node | None) -> dict[str, Node]:
        if previous is None or previous.kind != "dir" or not previous.subtree:
            return {}
        return {node.name: node for node in self.repository.load_tree(previous.subtree)}

    def _count_removed(self, node: Node) -> None:
        if node.kind != "dir":
            self.counts.removed += 1
            self.counts.files_delta -= 1
            self.counts.bytes_delta -= node.size
            return
        for child in self.previous_entries(node).values():
            self._count_removed(child)

    def store_tree(self, nodes: list[Node]) -> str:
        data = encode_tree(nodes)
        tree_id = digest(data)
        if self.writer.add(tree_id, "tree", data):
            self.cache.put_blob(tree_id, "tree", data)
        return tree_id

    def _unchanged(self, path: str, previous: Node | None) -> bool:
        """In an event-driven run: may this entry be taken as is from the previous snapshot?"""
        return self.changed is not None and previous is not None and not self.changed.touches(path)

    def scan_dir(self, path: str, source: str, previous: Node | None) -> str | None:
        """Store the tree of folder `path`; None when the folder cannot be listed."""
        if self.stop is not None and self.stop.is_set():
            raise InterruptedRunError("backup interrupted")
        try:
            with os.scandir(path) as iterator:
                names = sorted(entry.name for entry in iterator)
        except OSError as error:
            self.warn(f"cannot read folder {path}: {error.strerror or error}")
            return None
        before = self.previous_entries(previous)
        nodes = []
        for name in names:
            child = f"{path}/{name}" if path != "/" else f"/{name}"
            earlier = before.get(name)
            node = earlier if self._unchanged(child, earlier) else self.scan_entry(child, name, source, earlier)
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
        if previous is not None and previous.kind != "dir":
            self._count_removed(previous)
            previous = None
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
        self.progress.file_done(path, st.st_size)
        node = Node(name, "file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid,
                    size=st.st_size, content=tuple(chunks))
        return self._classify(node, previous)

    def _classify(self, node: Node, previous: Node | None) -> Node:
        """Count a file or symlink against the previous snapshot."""
        self.counts.files += 1
        self.counts.bytes += node.size
        self.counts.files_delta += 1
        self.counts.bytes_delta += node.size
        if previous is not None and previous.kind == "dir":
            self._count_removed(previous)
            previous = None
        if previous is None:
            self.counts.new += 1
            return node
        self.counts.files_delta -= 1
        self.counts.bytes_delta -= previous.size
        if previous == node:
            self.counts.unchanged += 1
        else:
            self.counts.changed += 1
        return node


def _split_first(paths: list[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for path in paths:
        head, _, tail = path.partition("/")
        grouped.setdefault(head, []).append(tail)
    return grouped


def _ancestor(run: _Run, path: str, name: str, rests: list[str], previous: Node | None) -> Node | None:
    """The node of `path`: a source (scanned), or a folder on the way to sources (only those)."""
    if "" in rests:  # `path` is a source
        if run._unchanged(path, previous):
            return previous
        try:
            st = os.stat(path)  # a source given as a symlink to a folder is backed up as that folder
        except OSError as error:
            run.warn(f"cannot read source {path}: {error.strerror or error}")
            return None
        return run.dir_node(path, name, st, path, previous)
    try:
        st = os.stat(path)
    except OSError as error:
        run.warn(f"cannot read source {path}: {error.strerror or error}")
        return None
    before = run.previous_entries(previous)
    nodes = []
    for child, child_rests in sorted(_split_first(rests).items()):
        node = _ancestor(run, f"{path}/{child}", child, child_rests, before.get(child))
        if node is not None:
            nodes.append(node)
    tree = run.store_tree(nodes)
    # A folder above the sources changes its mtime whenever anything else in it changes (another
    # user's home folder, a temporary file): keep the recorded one, so that it alone never makes
    # a new snapshot.
    mtime_ns = previous.mtime_ns if previous is not None and previous.kind == "dir" else st.st_mtime_ns
    return Node(name, "dir", stat.S_IMODE(st.st_mode), mtime_ns, st.st_uid, st.st_gid, subtree=tree)


def find_parent(repository: Repository, host: str, sources: tuple[str, ...], now: datetime
                ) -> tuple[Snapshot | None, bool]:
    """(the snapshot this run is compared with, whether untouched entries may be taken from it).

    Only the last snapshot this host recorded is trusted: a snapshot's time is whatever its host's
    clock said, and one dated in the future would otherwise be the parent for ever. Without a usable
    record, the newest snapshot of the same host and sources not dated in the future is compared with.
    """
    same = [snapshot for snapshot in repository.list_snapshots()
            if snapshot.host == host and sorted(snapshot.sources) == sorted(sources)]
    recorded = repository.recorded_snapshot(host, sources)
    for snapshot in same:
        if snapshot.id == recorded:
            return snapshot, True
    earlier = [snapshot for snapshot in same if not dated_in_future(snapshot, now)]
    return (earlier[-1] if earlier else None), False


def _summary(run: _Run, parent: Snapshot | None, writer: BlobWriter, started: float) -> Summary:
    counts = run.counts
    files, total = counts.files, counts.bytes
    if run.changed is not None and parent is not None:  # untouched parts were not walked
        files = parent.summary.files + counts.files_delta
        total = parent.summary.bytes + counts.bytes_delta
    return Summary(
        files=files,
        dirs=counts.dirs,
        bytes=total,
        new=counts.new,
        changed=counts.changed,
        unchanged=files - counts.new - counts.changed,
        removed=counts.removed,
        bytes_read=counts.bytes_read,
        bytes_added=writer.bytes_added,
        warnings=len(run.warnings),
        duration_seconds=round(time.monotonic() - started, 3),
    )


def run_backup(
    repository: Repository,
    options: BackupOptions,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    changed: Iterable[str] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupResult:
    """Back up `options.sources` into an opened repository whose index is loaded.

    With `changed` (paths from events), only those paths and the folders on their way are
    looked at; without it, or without a previous snapshot, every source is walked.
    """
    started = time.monotonic()
    moment = clock()
    sources = tuple(str(source) for source in options.sources)
    parent, trusted = find_parent(repository, options.host, sources, moment)
    if changed is not None and parent is not None and not trusted:
        log.info("walking every source: snapshot %s is not the last this host recorded", parent.id)
    changes = ChangedPaths(changed) if changed is not None and trusted else None
    writer = repository.writer()
    run = _Run(repository, writer, options, progress or Progress(), stop, changes)
    try:
        previous_root = {node.name: node for node in repository.load_tree(parent.tree)} if parent else {}
        nodes = []
        for name, rests in sorted(_split_first([source.strip("/") for source in sources]).items()):
            node = _ancestor(run, "/" + name, name, rests, previous_root.get(name))
            if node is not None:
                nodes.append(node)
        root = run.store_tree(nodes)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    finally:
        run.cache.commit()
    summary = _summary(run, parent, writer, started)
    if parent is not None and parent.tree == root:
        if not trusted:  # walked in full and found equal: it is what this host holds now
            repository.record_snapshot(options.host, sources, parent.id)
        return BackupResult(None, summary, parent, run.warnings, changes is None)
    snapshot = Snapshot(new_snapshot_id(moment), moment, options.host, sources, root,
                        parent.id if parent else None, summary)
    repository.confirm_stored(writer)
    repository.record_snapshot(options.host, sources, snapshot.id)
    repository.save_snapshot(snapshot)
    if not run.warnings and changes is None:
        run.cache.forget_files_before(run.generation)
    run.cache.commit()
    summary = replace(summary, duration_seconds=round(time.monotonic() - started, 3))
    return BackupResult(snapshot, summary, parent, run.warnings, changes is None)
