"""Restore a snapshot, or some of its paths, under a folder: every byte verified, nothing outside.

Each entry is recreated at DIR joined with its absolute path (as restic does). Folders are
opened one component at a time with O_NOFOLLOW relative to their parent's descriptor, so
neither a crafted snapshot nor a symlink already in DIR can make a write land outside DIR.
Files are written under a temporary name and renamed into place; files in DIR that the
snapshot does not name are left alone.

Two passes over the trees, both generators: the first sums the bytes needed of each pack (to
fetch packs whole, in order, ahead), the second restores; a folder's metadata is set once all it
holds is restored. Memory does not grow with the number of entries, and a snapshot whose trees
expand beyond what it may hold is refused before either pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from watcher.errors import IntegrityError, NotFoundError, SnapshotNotFoundError, WatcherError
from watcher.repository import Repository, pack_key
from watcher.snapshot import Node, Snapshot

log = logging.getLogger(__name__)

# Packs kept after use, for blobs needed again out of order (a pack is dropped at once when the
# restore has taken every byte it needed of it, so this only bounds packs still needed later).
PACK_CACHE_BYTES = 32 * 1024 * 1024
# Packs downloaded ahead of the one being restored: one overlaps the network with the disk; more
# only held memory (16 MiB each) while the restore, which writes slower than it downloads, caught up.
PREFETCH_PACKS = 1
WHOLE_PACK_FRACTION = 0.25
OPEN_FOLDERS = 32  # besides the root: the deepest folders of the current path kept open
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NAME_MAX = 255  # bytes in one file name (Linux, and the common file systems of other systems)
TEMP_SUFFIX = ".watcher-restore-"


class RestoreTargetError(WatcherError):
    """DIR cannot be created or opened as a folder."""


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


class RestoreProgress:
    def start(self, total_bytes: int) -> None:
        pass

    def advance(self, size: int) -> None:
        pass


def _normalize(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part and part != ".")


class _Selection:
    """Which snapshot paths to restore: everything, or the given paths with their parents."""

    def __init__(self, paths: list[str]) -> None:
        self.wanted = [_normalize(path) for path in paths]
        self.found: set[tuple[str, ...]] = set()

    def includes(self, parts: tuple[str, ...]) -> bool:
        if not self.wanted:
            return True
        for wanted in self.wanted:
            if parts[: len(wanted)] == wanted:
                self.found.add(wanted)
                return True
            if wanted[: len(parts)] == parts:
                return True
        return False

    def missing(self) -> list[str]:
        return ["/" + "/".join(parts) for parts in self.wanted if parts not in self.found]


def _walk(
    repository: Repository, tree_id: str, selection: _Selection,
    failed: Callable[[tuple[str, ...], Exception], None],
) -> Iterator[tuple[tuple[str, ...], Node, bool]]:
    """Every selected entry, depth first, folders before what they hold: `(parts, node, False)`;
    each folder again, `(parts, node, True)`, once all it holds has come. A generator over the
    trees (nothing grows with the number of entries); a folder whose tree cannot be read, and an
    entry that cannot be read (when selected), are handed to `failed`, and the rest goes on."""

    def entries(tree: str, prefix: tuple[str, ...]) -> Iterator[Node]:
        nodes, bad = repository.load_readable_tree(tree)
        for entry in bad:
            if entry.name is None or selection.includes((*prefix, entry.name)):
                failed(prefix, IntegrityError(entry.message))
        return iter(nodes)

    stack: list[tuple[tuple[str, ...], Node | None, Iterator[Node]]] = [((), None, entries(tree_id, ()))]
    while stack:
        prefix, folder, nodes = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            if folder is not None:
                yield prefix, folder, True
            continue
        parts = (*prefix, node.name)
        if not selection.includes(parts):
            continue
        yield parts, node, False
        if node.kind == "dir":
            children: Iterator[Node] = iter(())
            try:
                children = entries(node.subtree, parts) if node.subtree else children
            except (IntegrityError, NotFoundError) as error:
                failed(parts, error)
            stack.append((parts, node, children))


def _needs(repository: Repository, tree_id: str, selection: _Selection) -> tuple[dict[str, int], int]:
    """The first pass: bytes needed of each pack, in order of first need, and bytes in all."""
    needed: dict[str, int] = {}
    total = 0
    for _parts, node, leaving in _walk(repository, tree_id, selection, lambda parts, error: None):
        if leaving:
            continue
        for blob_id in node.content:
            try:
                entry = repository.locate(blob_id)
            except IntegrityError:
                continue  # the second pass reports it
            needed[entry.pack] = needed.get(entry.pack, 0) + entry.length
        total += node.size
    return needed, total


class _Prefetcher:
    """Downloads whole packs in the order the restore first needs them, a few ahead, so the
    network and the local disk work at the same time. A pack needed again later, or out of
    that order, is fetched by the caller itself."""

    def __init__(self, repository: Repository, order: list[str], ahead: int = PREFETCH_PACKS) -> None:
        self.repository = repository
        self.order = order
        self.position = {pack: index for index, pack in enumerate(order)}
        self.ahead = ahead
        self.ready: dict[str, bytes | BaseException] = {}
        self.taken = -1
        self.stopped = False
        self.condition = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="pack-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for index, pack in enumerate(self.order):
            with self.condition:
                while not self.stopped and len(self.ready) >= self.ahead:
                    self.condition.wait()
                if self.stopped:
                    return
                if index < self.taken:
                    continue  # the restore went past it (a file failed)
            try:
                data: bytes | BaseException = self.repository.read_pack(pack, verify=False)  # blobs are checked
            except BaseException as error:  # handed to the restore's thread by take()
                data = error
            with self.condition:
                self.ready[pack] = data
                self.condition.notify_all()

    def take(self, pack: str) -> bytes | None:
        """The pack, once downloaded; None if the prefetcher will not bring it (any more)."""
        index = self.position.get(pack)
        with self.condition:
            if index is None or index <= self.taken:
                return None
            self.taken = index
            while True:
                for skipped in [p for p in self.ready if self.position[p] < index]:
                    del self.ready[skipped]
                self.condition.notify_all()
                if pack in self.ready:
                    data = self.ready.pop(pack)
                    break
                self.condition.wait()
        if isinstance(data, BaseException):
            raise data
        return data

    def close(self) -> None:
        with self.condition:
            self.stopped = True
            self.ready.clear()
            self.condition.notify_all()
        self.thread.join(timeout=30)


class _BlobSource:
    """Fetches data blobs: whole packs when much of them is needed, single ranges otherwise."""

    def __init__(self, repository: Repository, needed: dict[str, int], order: list[str]) -> None:
        self.repository = repository
        self.needed = needed
        self.remaining = dict(needed)  # bytes still to be taken of each pack: at 0 it is dropped
        self.packs: OrderedDict[str, bytes] = OrderedDict()
        self.cached_bytes = 0
        self.prefetcher = _Prefetcher(repository, [pack for pack in order if self.whole(pack)])

    def whole(self, pack: str) -> bool:
        return self.needed.get(pack, 0) >= self.repository.packs.get(pack, 1) * WHOLE_PACK_FRACTION

    def close(self) -> None:
        self.prefetcher.close()

    def get(self, blob_id: str) -> bytes | memoryview:
        entry = self.repository.locate(blob_id)
        data = self.packs.get(entry.pack)
        if data is not None:
            self.packs.move_to_end(entry.pack)
        elif self.whole(entry.pack):
            data = self.prefetcher.take(entry.pack) or self.repository.read_pack(entry.pack, verify=False)
            self.packs[entry.pack] = data
            self.cached_bytes += len(data)
            while self.cached_bytes > PACK_CACHE_BYTES and len(self.packs) > 1:
                _, dropped = self.packs.popitem(last=False)
                self.cached_bytes -= len(dropped)
        else:
            with self.repository.lock:
                stored = self.repository.backend.read_range(pack_key(entry.pack), entry.offset, entry.length)
            return self.repository.codec.decode(stored, entry)
        blob = self.repository.codec.decode(memoryview(data)[entry.offset : entry.offset + entry.length], entry)
        self._taken(entry.pack, entry.length)
        return blob

    def _taken(self, pack: str, length: int) -> None:
        """Count what was taken of a cached pack; drop the pack once nothing more is needed of it
        (memory: the restore then holds only packs it will read again, and those prefetched)."""
        left = self.remaining.get(pack, 0) - length
        self.remaining[pack] = left
        if left <= 0 and pack in self.packs:
            self.cached_bytes -= len(self.packs.pop(pack))


class _Folders:
    """Descriptors of the folders on the current path, opened without following links.

    Only the root and the deepest OPEN_FOLDERS folders stay open, so a tree of any depth restores
    within the default descriptor limit; a folder closed on the way down is opened again, one
    component at a time from the nearest open one and never through a link, when it is needed.
    """

    def __init__(self, root: Path) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            self.stack: list[tuple[str, int]] = [("", os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))]
        except OSError as error:
            raise RestoreTargetError(f"cannot restore into {root}: {error.strerror or error}") from error

    def open(self, parts: tuple[str, ...]) -> int:
        """The descriptor of folder `parts` (below the root), created if missing."""
        depth = 0
        while depth < len(parts) and depth + 1 < len(self.stack) and self.stack[depth + 1][0] == parts[depth]:
            depth += 1
        while len(self.stack) > depth + 1:
            self._close(self.stack.pop()[1])
        for name in parts[depth:]:
            parent = self._descriptor(len(self.stack) - 1)
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=parent)
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            self.stack.append((name, fd))
            self._close_above_window()
        return self._descriptor(len(self.stack) - 1)

    def _descriptor(self, level: int) -> int:
        """The descriptor of the folder at `level`, the deepest of the stack, opened again if it was
        closed: from the nearest open folder above it, keeping the OPEN_FOLDERS deepest open (so
        the walk back up a deep path reopens a folder once per window, not once per level)."""
        if self.stack[level][1] >= 0:
            return self.stack[level][1]
        start = level
        while self.stack[start - 1][1] < 0:  # the root (level 0) is never closed
            start -= 1
        keep_from = max(start, level - OPEN_FOLDERS + 1)
        for current in range(start, level + 1):
            name = self.stack[current][0]
            self.stack[current] = (name, os.open(name, DIR_FLAGS, dir_fd=self.stack[current - 1][1]))
            if 0 < current - 1 < keep_from:
                self._close_level(current - 1)
        return self.stack[level][1]

    def _close_above_window(self) -> None:
        level = len(self.stack) - 1 - OPEN_FOLDERS
        if level > 0:
            self._close_level(level)

    def _close_level(self, level: int) -> None:
        name, fd = self.stack[level]
        self._close(fd)
        self.stack[level] = (name, -1)

    @staticmethod
    def _close(fd: int) -> None:
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        while self.stack:
            self._close(self.stack.pop()[1])


def _apply_metadata(fd: int, node: Node) -> None:
    if os.geteuid() == 0:
        os.fchown(fd, node.uid, node.gid)
    os.fchmod(fd, node.mode)
    os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))


def restore_temp_name(name: str) -> str:
    """`.<name>.watcher-restore-<random>`, within NAME_MAX bytes whatever the name.

    NAME_MAX counts bytes, and a character may take up to 4 of them: the name is shortened by
    whole characters (a surrogate escape is one byte) until its bytes fit, never leaving the
    first bytes of a character behind.
    """
    token = secrets.token_hex(4)
    budget = NAME_MAX - len(".") - len(TEMP_SUFFIX) - len(token)
    if len(os.fsencode(name)) <= budget:
        return f".{name}{TEMP_SUFFIX}{token}"
    kept, size = 0, 0
    for character in name:
        size += len(os.fsencode(character))
        if size > budget:
            break
        kept += 1
    return f".{name[:kept]}{TEMP_SUFFIX}{token}"


class _Restorer:
    def __init__(self, repository: Repository, root: Path, progress: RestoreProgress) -> None:
        self.repository = repository
        self.folders = _Folders(root)
        self.progress = progress
        self.result = RestoreResult()

    def restore_file(self, parent: int, node: Node, source: _BlobSource) -> None:
        temp = restore_temp_name(node.name)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
        try:
            written = 0
            with os.fdopen(fd, "wb", closefd=False) as handle:
                for blob_id in node.content:
                    data = source.get(blob_id)
                    handle.write(data)
                    written += len(data)
                    self.progress.advance(len(data))
            if written != node.size:
                raise IntegrityError(f"restored {written} bytes where the snapshot says {node.size}")
            _apply_metadata(fd, node)
            os.close(fd)
            fd = -1
            os.rename(temp, node.name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=parent)
            raise
        self.result.files += 1
        self.result.bytes += written

    def restore_symlink(self, parent: int, node: Node) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(node.name, dir_fd=parent)
        os.symlink(node.target or "", node.name, dir_fd=parent)
        if os.geteuid() == 0:
            os.chown(node.name, node.uid, node.gid, dir_fd=parent, follow_symlinks=False)
        os.utime(node.name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=parent, follow_symlinks=False)
        self.result.symlinks += 1

    def failed(self, parts: tuple[str, ...], error: Exception) -> None:
        where = "/" + "/".join(parts)
        message = getattr(error, "strerror", None) or str(error)
        self.result.errors.append(f"{where}: {message}")
        log.error("cannot restore %s: %s", where, message)

    def finish_dir(self, parts: tuple[str, ...], node: Node) -> None:
        fd = self.folders.open(parts)
        _apply_metadata(fd, node)
        self.result.dirs += 1


def run_restore(
    repository: Repository,
    snapshot: Snapshot,
    target: Path,
    paths: list[str] | None = None,
    progress: RestoreProgress | None = None,
) -> RestoreResult:
    """Restore `snapshot` (all of it, or `paths`) under `target`; per-entry errors are collected."""
    selection = _Selection(paths or [])
    repository.check_expansion(snapshot)
    needed, total = _needs(repository, snapshot.tree, selection)
    missing = selection.missing()
    if missing:
        raise SnapshotNotFoundError(f"not in snapshot {snapshot.id}: {', '.join(missing)}")
    progress = progress or RestoreProgress()
    progress.start(total)
    restorer = _Restorer(repository, target, progress)  # first: DIR may be refused, and no thread runs yet
    source = _BlobSource(repository, needed, list(needed))
    try:
        for parts, node, leaving in _walk(repository, snapshot.tree, selection, restorer.failed):
            try:
                if leaving:
                    restorer.finish_dir(parts, node)
                elif node.kind == "dir":
                    restorer.folders.open(parts)
                elif node.kind == "file":
                    restorer.restore_file(restorer.folders.open(parts[:-1]), node, source)
                else:
                    restorer.restore_symlink(restorer.folders.open(parts[:-1]), node)
            except (OSError, IntegrityError, NotFoundError) as error:
                restorer.failed(parts, error)
    finally:
        source.close()
        restorer.folders.close()
    return restorer.result
