"""One backup run: walk the sources (or only what changed), store what is new, commit one snapshot.

Change detection has two layers: the local cache answers "was this file read before, with
exactly this size, mtime, ctime and inode?" (so unchanged files are not read), and the
repository's index answers "is that content really stored?" (so a stale or foreign cache can
cost time, never correctness). The previous snapshot (the last this host recorded for these
sources, see `find_parent`) is walked alongside, to count new, changed, unchanged and removed
files and to see when nothing changed; what of it cannot be read is read again from the disk.

Given the set of paths that changed (from file system events), a run lists only the folders
on the way to those paths and takes everything else from the previous snapshot, so its cost
follows the size of the change, not the size of the tree.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from watcher.errors import IntegrityError, InterruptedRunError, NotFoundError
from watcher.locks import Lease, LockExpiredError
from watcher.repository import BlobWriter, PacksRemovedError, Repository
from watcher.scan import (
    DIR_FLAGS,
    ChangedWhileReading,
    ChunkReader,
    Excluder,
    file_state,
    open_source,
    reopen_below,
    reopen_parent,
)
from watcher.snapshot import (
    Incomplete,
    Node,
    Snapshot,
    Summary,
    dated_in_future,
    encode_tree,
    new_snapshot_id,
    storable_ns,
)

log = logging.getLogger(__name__)

# The cache never records a file modified this close to the scan: file times tick coarsely
# (a few ms), so a write just after our read could leave the same mtime (git's "racy" files).
RACY_SECONDS = 1
# The most files a snapshot names as kept in their previous version: its document must stay far
# below what a reader accepts (repository.SNAPSHOT_LIMIT, 16 MiB).
KEPT_LISTED = 10_000
# Folders on the current path kept open (besides the source's): a deeper tree reopens the
# others through "..", so any depth fits in a few descriptors.
OPEN_FOLDERS = 32


@dataclass(frozen=True)
class BackupOptions:
    sources: tuple[Path, ...]
    exclude: tuple[str, ...] = ()
    host: str = ""
    never_back_up: tuple[str, ...] = ()
    real_sources: tuple[str, ...] = ()  # each source's real path, as resolved once (default: now)


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

    def on_way_or_changed(self, path: str) -> bool:
        return path in self.paths or path in self.on_the_way

    def touches_below(self, path: str) -> bool:
        """True when `path` or a folder above it changed."""
        while path not in self.paths:
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent
        return True

    def touches(self, path: str) -> bool:
        return self.on_way_or_changed(path) or self.touches_below(path)


@dataclass
class _Folder:
    """A folder being walked: its open descriptor (-1 once closed), the names still to do
    (last first) and the entries done so far."""

    fd: int
    path: str
    name: str
    relative: str  # to its source: what exclusion patterns match
    st: os.stat_result
    before: dict[str, Node]
    names: list[str]
    whole: bool  # an event-driven run: the folder itself changed, so every entry is read
    new: bool  # the parent snapshot has no folder here
    nodes: list[Node] = field(default_factory=list)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


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
    dirs_delta: int = 0


class _Run:
    def __init__(self, repository: Repository, writer: BlobWriter, options: BackupOptions, progress: Progress,
                 stop: threading.Event | None, changed: ChangedPaths | None, parent: Snapshot | None) -> None:
        assert repository.config is not None
        params = repository.chunker
        self.repository = repository
        self.cache = repository.cache
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.changed = changed
        self.reader = ChunkReader(params.min_size, params.avg_size, params.max_size, params.normalization, params.seed,
                                  repository.codec.blob_id)
        self.empty_tree = repository.codec.blob_id(encode_tree([]))
        self.excluder = Excluder(options.exclude, options.never_back_up)
        self.counts = _Counts()
        self.warnings: list[str] = []
        self.below: dict[str, tuple[int, int, int]] = {}  # parent tree id -> (files, bytes, folders) below it
        self.taken: set[str] = set()  # sources an event-driven run took unchanged from the parent
        self.kept_previous: list[str] = []
        self.lost_sources: list[str] = []
        self.parent_lost = set(parent.incomplete.sources) if parent is not None else set()
        sources = [str(source) for source in options.sources]
        self.real_sources = dict(zip(sources, options.real_sources or map(os.path.realpath, sources), strict=True))
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
        return {node.name: node for node in self.parent_tree(previous.subtree)}

    def parent_tree(self, tree_id: str) -> list[Node]:
        """The readable entries of a tree of the parent snapshot. The parent is only compared with:
        an entry or a tree that cannot be read (damage, a hostile server) is taken as absent, so
        what it stood for is read again from the disk, never lost, and the run goes on."""
        try:
            nodes, bad = self.repository.load_readable_tree(tree_id)
        except (IntegrityError, NotFoundError) as error:
            log.warning("%s: what it holds is read again from the disk", error)
            return []
        for entry in bad:
            log.warning("%s: read again from the disk", entry.message)
        return nodes

    def _count_removed(self, node: Node) -> None:
        files, size, dirs = self._below(node.subtree) if node.kind == "dir" else (1, node.size, 0)
        self.counts.removed += files
        self.counts.files_delta -= files
        self.counts.bytes_delta -= size
        self.counts.dirs_delta -= dirs + (node.kind == "dir")

    def _below(self, tree_id: str | None) -> tuple[int, int, int]:
        """(files, bytes, folders) below a tree of the parent snapshot, each distinct tree counted
        once: a tree that names one subtree many times (a hostile server) costs only its distinct trees."""
        totals = self.below
        pending = [tree_id] if tree_id else []
        while pending:
            current = pending[-1]
            if current in totals:
                pending.pop()
                continue
            nodes = self.parent_tree(current)
            folders = [node.subtree for node in nodes if node.kind == "dir" and node.subtree]
            waiting = [folder for folder in folders if folder not in totals]
            if waiting:  # a tree cannot name itself (ids are hashes): this ends
                pending.extend(waiting)
                continue
            pending.pop()
            leaves = [node for node in nodes if node.kind != "dir"]
            below = [totals[folder] for folder in folders]
            totals[current] = (len(leaves) + sum(f for f, _, _ in below),
                               sum(node.size for node in leaves) + sum(b for _, b, _ in below),
                               len(nodes) - len(leaves) + sum(d for _, _, d in below))
        return totals[tree_id] if tree_id else (0, 0, 0)

    def store_tree(self, nodes: list[Node]) -> str:
        data = encode_tree(nodes)
        tree_id = self.repository.codec.blob_id(data)
        if self.writer.add(tree_id, "tree", data):
            self.cache.put_blob(tree_id, "tree", data)
        return tree_id

    def _unchanged(self, path: str, previous: Node | None) -> bool:
        """In an event-driven run: may this entry be taken as is from the previous snapshot?"""
        return self.changed is not None and previous is not None and not self.changed.touches(path)

    def scan_source(self, fd: int, path: str, name: str, previous: Node | None) -> Node | None:
        """The node of the source folder open as `fd` (closed here), walked without recursion.

        A folder's tree is stored once all of its entries are done, so the walk keeps a stack of
        folders being listed; only the deepest OPEN_FOLDERS of them (and the source) keep their
        descriptor open, the others are reopened through ".." when the walk comes back to them.
        """
        whole = self.changed is None or self.changed.touches_below(path)
        top = self._open(fd, path, name, "", previous, whole)
        if top is None:
            return None
        stack = [top]
        try:
            while True:
                folder = stack[-1]
                if self.stop is not None and self.stop.is_set():
                    raise InterruptedRunError("backup interrupted")
                if folder.names:
                    entry = self._entry(folder, folder.names.pop())
                    if isinstance(entry, _Folder):
                        stack.append(entry)
                        if len(stack) > OPEN_FOLDERS + 1:
                            stack[-OPEN_FOLDERS - 1].close()
                    elif entry is not None:
                        folder.nodes.append(entry)
                    continue
                node = self._finish(folder)
                stack.pop()
                if not stack:
                    folder.close()
                    return node
                if self._back_to(stack, folder):
                    stack[-1].nodes.append(node)
                folder.close()
        finally:
            for folder in stack:
                folder.close()

    def _back_to(self, stack: list[_Folder], child: _Folder) -> bool:
        """Reopen the folder the walk returns to from `child` if it was closed: through "..", or
        else by name from the nearest folder still open, and only if it is the same folder. False
        when it is gone: it is dropped (with a warning), and so are the closed folders above it."""
        folder = stack[-1]
        if folder.fd >= 0:
            return True
        folder.fd = reopen_parent(child.fd, folder.st)
        if folder.fd < 0:
            opened = max(index for index, above in enumerate(stack) if above.fd >= 0)
            folder.fd = reopen_below(stack[opened].fd, [above.name for above in stack[opened + 1:]], folder.st)
        if folder.fd >= 0:
            return True
        while stack[-1].fd < 0:  # the source's folder is never closed
            self.warn(f"cannot read folder {stack.pop().path}: it moved while being read")
        return False

    def _open(self, fd: int, path: str, name: str, relative: str, previous: Node | None,
              whole: bool) -> _Folder | None:
        """List folder `fd` (taking ownership of the descriptor)."""
        try:
            st = os.fstat(fd)
            with os.scandir(fd) as iterator:
                names = sorted((entry.name for entry in iterator), reverse=True)  # popped from the end
        except OSError as error:
            os.close(fd)
            self.warn(f"cannot read folder {path}: {error.strerror or error}")
            return None
        return _Folder(fd, path, name, relative, st, self.previous_entries(previous), names, whole,
                       previous is None or previous.kind != "dir")

    def _finish(self, folder: _Folder) -> Node:
        present = {node.name for node in folder.nodes}
        for name, gone in folder.before.items():
            if name not in present:
                self._count_removed(gone)
        self.counts.dirs += 1
        self.counts.dirs_delta += folder.new
        st = folder.st
        return Node(folder.name, "dir", stat.S_IMODE(st.st_mode), storable_ns(st.st_mtime_ns), st.st_uid, st.st_gid,
                    subtree=self.store_tree(folder.nodes))

    def _entry(self, folder: _Folder, name: str) -> Node | _Folder | None:
        """The node of one entry of `folder`, or the folder to walk next."""
        path = f"{folder.path}/{name}" if folder.path != "/" else f"/{name}"
        previous = folder.before.get(name)
        whole = folder.whole
        if not whole and self.changed is not None:
            if previous is not None and not self.changed.on_way_or_changed(path):
                return previous  # an event-driven run: untouched since the previous snapshot
            whole = path in self.changed.paths
        try:
            st = os.lstat(name, dir_fd=folder.fd)
        except FileNotFoundError:
            return None  # deleted since the folder was listed: it is simply not in this snapshot
        except OSError as error:
            self.warn(f"cannot read {path}: {error.strerror or error}")
            return None
        is_dir = stat.S_ISDIR(st.st_mode)
        relative = f"{folder.relative}/{name}" if folder.relative else name
        if self.excluder.excluded(path, relative, is_dir):
            return None
        if is_dir:
            if previous is not None and previous.kind != "dir":
                self._count_removed(previous)
                previous = None
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=folder.fd)
            except FileNotFoundError:
                return None
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    self.warn(f"cannot read folder {path}: it became a symlink or a file while being read "
                              "(not followed)")
                else:
                    self.warn(f"cannot read folder {path}: {error.strerror or error}")
                return None
            return self._open(fd, path, name, relative, previous, whole)
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=folder.fd)
            except OSError as error:
                self.warn(f"cannot read link {path}: {error.strerror or error}")
                return None
            return self._classify(Node(name, "symlink", stat.S_IMODE(st.st_mode), storable_ns(st.st_mtime_ns),
                                       st.st_uid, st.st_gid, target=target), previous)
        if stat.S_ISREG(st.st_mode):
            return self.file_node(folder.fd, path, name, st, previous)
        log.info("skipping %s: not a file, folder or symlink", path)
        return None

    def file_node(self, dir_fd: int, path: str, name: str, st: os.stat_result, previous: Node | None) -> Node | None:
        key = os.fsencode(path)
        state = file_state(st)
        chunks = self.cache.lookup_file(key, state)
        if chunks is not None and all(self.writer.known(chunk) for chunk in chunks):
            self.cache.touch_file(key, self.generation)
        else:
            try:
                result = self.reader.read(name, self._store_chunk, dir_fd)
            except FileNotFoundError:
                return None
            except ChangedWhileReading as error:
                return self._keep_previous(path, previous, str(error))
            except OSError as error:
                self.warn(f"cannot read {path}: {error.strerror or error}")
                return None
            st, chunks = result.stat, result.chunks
            if st.st_mtime_ns < self.racy_after_ns:
                self.cache.remember_file(key, file_state(st), chunks, self.generation)
        self.progress.file_done(path, st.st_size)
        node = Node(name, "file", stat.S_IMODE(st.st_mode), storable_ns(st.st_mtime_ns), st.st_uid, st.st_gid,
                    size=st.st_size, content=tuple(chunks))
        return self._classify(node, previous)

    def _keep_previous(self, path: str, previous: Node | None, why: str) -> Node | None:
        """A file that never stayed still for a whole read keeps the version the parent snapshot
        has (marked in the snapshot); without one it is not stored."""
        if previous is None or previous.kind != "file":
            self.warn(f"not stored: {path} {why}")
            return None
        self.warn(f"kept the previous version of {path}: it {why}")
        self.kept_previous.append(path)
        return self._classify(previous, previous)

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
            run.taken.add(path)
            return previous
        return _source(run, path, name, previous)
    try:
        st = os.stat(path)
    except OSError as error:
        for source in (f"{path}/{rest}" for rest in rests):
            run.warn(f"cannot read source {source}: {path}: {error.strerror or error}")
            run.lost_sources.append(source)
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
    mtime_ns = previous.mtime_ns if previous is not None and previous.kind == "dir" else storable_ns(st.st_mtime_ns)
    return Node(name, "dir", stat.S_IMODE(st.st_mode), mtime_ns, st.st_uid, st.st_gid, subtree=tree)


def _source(run: _Run, path: str, name: str, previous: Node | None) -> Node | None:
    """Walk one source. One that cannot be opened, or is empty where the parent snapshot had
    content (an unmounted disk), is a warning and marks the snapshot: it is no ground for retention."""
    try:
        fd = open_source(run.real_sources.get(path, path))
    except OSError as error:
        linked = error.errno in (errno.ELOOP, errno.ENOTDIR)
        why = "it, or a folder on its way, is now a symlink or a file (not followed)" if linked else error.strerror
        run.warn(f"cannot read source {path}: {why or error}")
        run.lost_sources.append(path)
        return None
    node = run.scan_source(fd, path, name, previous)
    if node is None:
        run.lost_sources.append(path)
    elif node.subtree == run.empty_tree and (path in run.parent_lost or (
            previous is not None and previous.kind == "dir" and previous.subtree != run.empty_tree)):
        run.warn(f"source {path} is empty where an earlier snapshot has content (a disk not mounted?)")
        run.lost_sources.append(path)
    return node


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
    dirs = counts.dirs
    if run.changed is not None and parent is not None:  # untouched parts were not walked
        files = parent.summary.files + counts.files_delta
        total = parent.summary.bytes + counts.bytes_delta
        dirs = parent.summary.dirs + counts.dirs_delta
    return Summary(
        files=files,
        dirs=dirs,
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


def _incomplete(run: _Run, parent: Snapshot | None) -> Incomplete:
    """This run's marks, and those of the parent on what an event-driven run took from it unchanged."""
    sources, kept = list(run.lost_sources), list(run.kept_previous)
    if run.changed is not None and parent is not None:
        sources += [path for path in parent.incomplete.sources if path not in sources and path in run.taken]
        kept += [path for path in parent.incomplete.kept_previous if not run.changed.touches(path)]
    if len(kept) > KEPT_LISTED:  # each is also a warning in the run's log; the snapshot stays small
        log.warning("%d files kept their previous version; the snapshot names the first %d", len(kept), KEPT_LISTED)
    return Incomplete(tuple(sources), tuple(sorted(kept)[:KEPT_LISTED]))


def run_backup(
    repository: Repository,
    options: BackupOptions,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    changed: Iterable[str] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    lease: Lease | None = None,
) -> BackupResult:
    """Back up `options.sources` into an opened repository whose index is loaded.

    With `changed` (paths from events), only those paths and the folders on their way are
    looked at; without it, or without a previous snapshot, every source is walked. `lease`: the
    shared lock this run holds, whose refreshes must have had no long gap for the snapshot to be saved.
    """
    started = time.monotonic()
    moment = clock()
    sources = tuple(str(source) for source in options.sources)
    parent, trusted = find_parent(repository, options.host, sources, moment)
    if changed is not None and parent is not None and not trusted:
        log.info("walking every source: snapshot %s is not the last this host recorded", parent.id)
    changes = ChangedPaths(changed) if changed is not None and trusted else None
    writer = repository.writer()
    run = _Run(repository, writer, options, progress or Progress(), stop, changes, parent)
    try:
        previous_root = {node.name: node for node in run.parent_tree(parent.tree)} if parent else {}
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
                        parent.id if parent else None, summary, _incomplete(run, parent))
    _commit(repository, writer, snapshot, options, sources, lease)
    if not run.warnings and changes is None:
        run.cache.forget_files_before(run.generation)
    run.cache.commit()
    summary = replace(summary, duration_seconds=round(time.monotonic() - started, 3))
    return BackupResult(snapshot, summary, parent, run.warnings, changes is None)


def _commit(repository: Repository, writer: BlobWriter, snapshot: Snapshot, options: BackupOptions,
            sources: tuple[str, ...], lease: Lease | None) -> None:
    """Save the snapshot, only if nothing it needs can have been removed by a `forget`.

    Locks keep a `forget` away while the lock is fresh; should it have gone unrefreshed for long
    (`lease`), a `forget` elsewhere may have taken it for stale, so the run fails (after
    `confirm_stored` has mended the index files it wrote). The lease is renewed just before, so
    the check and the upload of the snapshot have a whole lease ahead; should even they outlast it,
    the snapshot is checked again, and removed if a `forget` took what it names meanwhile.
    """
    if lease is not None:
        try:
            lease.renew()
        except LockExpiredError:
            with contextlib.suppress(PacksRemovedError):
                repository.confirm_stored(writer)  # mend our index files if data is already gone
            raise
    repository.confirm_stored(writer)
    repository.record_snapshot(options.host, sources, snapshot.id)
    repository.save_snapshot(snapshot)
    if lease is not None:
        try:
            lease.confirm()
        except LockExpiredError:
            try:
                repository.confirm_stored(writer)
            except PacksRemovedError:
                repository.forget_snapshot(snapshot.id)
                raise
            log.warning("the repository lock went unrefreshed while snapshot %s was saved; all it needs is "
                        "still stored: it stays", snapshot.id)
