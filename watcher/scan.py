"""Reading the sources: exclusion patterns, folders opened safely, files cut into content-defined chunks.

Folders and files are opened relative to their parent's descriptor and never through a symlink
(O_NOFOLLOW), so an entry swapped for a link while the walk runs is refused, never followed.

Chunk boundaries depend on content (FastCDC), not on offsets, so inserting bytes into a large
file changes only the chunks around the insertion, and everything after it deduplicates.
Files are streamed: memory stays flat whatever their size.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pathspec
from pyfastcdc import FastCDC

from watcher.cache import FileState

READ_ATTEMPTS = 3
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
StoreChunk = Callable[[str, "memoryview | bytes"], None]


class Excluder:
    """gitignore-style patterns, matched against paths relative to each source folder.

    `always` holds absolute paths never to back up whatever the patterns say, nor anything
    below them (the local repository and the state folder when they sit inside a source).
    """

    def __init__(self, patterns: Iterable[str], always: Iterable[str] = ()) -> None:
        self.spec = pathspec.GitIgnoreSpec.from_lines(list(patterns))
        self.always = {os.path.normpath(path) for path in always}
        self.below = tuple(path.rstrip("/") + "/" for path in self.always)
        self.active = bool(self.spec.patterns) or bool(self.always)

    def excluded(self, absolute: str, relative: str, is_dir: bool) -> bool:
        if not self.active:
            return False
        if absolute in self.always or absolute.startswith(self.below):
            return True
        return self.spec.match_file(relative + "/" if is_dir else relative)


def never_back_up(paths: Iterable[str], sources: dict[str, str]) -> tuple[str, ...]:
    """`paths` (the state folder, a local repository) under every name the walk may give them.

    The walk names entries after the configured source paths; `sources` maps each of them to
    its real path. A folder named through a symlink is thus still recognised inside a source.
    """
    names: list[str] = []
    for path in paths:
        real = os.path.realpath(path)
        names += [os.path.normpath(path), real]
        for source, source_real in sources.items():
            if real == source_real or real.startswith(source_real.rstrip("/") + "/"):
                names.append(os.path.normpath(source + real[len(source_real):]))
    return tuple(dict.fromkeys(names))


def open_source(real: str) -> int:
    """A descriptor of folder `real` (an absolute real path), opened one component at a time
    without following any symlink: a source, or a folder on its way, that became a symlink
    since it was resolved raises OSError (ELOOP or ENOTDIR)."""
    fd = os.open("/", DIR_FLAGS)
    try:
        for part in real.split("/"):
            if part:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def reopen_parent(child_fd: int, expected: os.stat_result) -> int:
    """The folder holding the folder `child_fd` if it is still the one `expected` describes, else -1."""
    try:
        fd = os.open("..", DIR_FLAGS, dir_fd=child_fd)
    except OSError:
        return -1
    return _if_same(fd, expected)


def reopen_below(fd: int, names: list[str], expected: os.stat_result) -> int:
    """Folder `names` below folder `fd` (left open), never through a symlink, if it is the one
    `expected` describes; else -1."""
    current = fd
    try:
        for name in names:
            child = os.open(name, DIR_FLAGS, dir_fd=current)
            if current != fd:
                os.close(current)
            current = child
    except OSError:
        if current != fd:
            os.close(current)
        return -1
    return _if_same(current, expected) if current != fd else -1


def _if_same(fd: int, expected: os.stat_result) -> int:
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (expected.st_dev, expected.st_ino):
        os.close(fd)
        return -1
    return fd


def file_state(st: os.stat_result) -> FileState:
    return FileState(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class ReadResult:
    """A file read in full whose state did not change while it was read."""

    stat: os.stat_result
    chunks: list[str]


class ChangedWhileReading(Exception):
    """The file kept changing under every attempt to read it."""


class ChunkReader:
    """Reads a file into content-defined chunks; one per thread (FastCDC keeps state)."""

    def __init__(self, min_size: int, avg_size: int, max_size: int, normalization: int, seed: int,
                 identify: Callable[[bytes | memoryview], str] | None = None) -> None:
        self.identify = identify or (lambda data: hashlib.sha256(data).hexdigest())
        self.small = min_size
        self.cdc = FastCDC(
            avg_size, min_size=min_size, max_size=max_size, normalized_chunking=normalization, seed=seed
        )

    def _pieces(self, handle: object, size: int) -> Iterator[memoryview | bytes]:
        if size <= self.small:
            data = handle.read()  # type: ignore[attr-defined]
            if data:
                yield data
            return
        for chunk in self.cdc.cut_stream(handle):  # type: ignore[arg-type]
            yield chunk.data

    def read(self, name: str, store: StoreChunk, dir_fd: int | None = None) -> ReadResult:
        """Chunk file `name` (in folder `dir_fd`), handing each chunk to `store`; re-read if the
        file changes meanwhile.

        Raises OSError when the file cannot be opened or read, ChangedWhileReading when it
        never stays still for a whole read.
        """
        for _attempt in range(READ_ATTEMPTS):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
            with os.fdopen(fd, "rb", buffering=0) as handle:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise ChangedWhileReading("is no longer a regular file")
                chunks: list[str] = []
                total = 0
                for piece in self._pieces(handle, before.st_size):
                    chunk_id = self.identify(piece)
                    store(chunk_id, piece)
                    chunks.append(chunk_id)
                    total += len(piece)
                after = os.fstat(fd)
            if file_state(before) == file_state(after) and total == after.st_size:
                return ReadResult(after, chunks)
        raise ChangedWhileReading(f"changed while being read ({READ_ATTEMPTS} attempts)")

