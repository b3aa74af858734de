"""A folder on a local or mounted file system.

What watcher creates in it (folders 0700, objects 0600) only its owner can read; the target
folder itself, when the user made it, keeps its modes.

Objects are opened one path component at a time without following symbolic links: the folder
may be shared with others, and a link placed inside it (to /dev/zero, to a file elsewhere) is
damage to refuse, never something to read. The folder itself may be reached through links.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from watcher.backends.base import (
    DEFAULT_LIMIT,
    Backend,
    ObjectInfo,
    TemporaryInfo,
    is_key,
    is_temp_name,
    limited,
    temp_name,
    too_large,
    validate_key,
    validate_prefix,
    validate_temp_name,
)
from watcher.errors import (
    BackendConfigError,
    BackendError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    StorageFullError,
)
from watcher.private import create_file, make_folders

_COPY_BUFFER = 1 << 20
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OBJECT = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block the open


def translate(error: OSError, what: str) -> BackendError:
    """The one table from `OSError` to our errors; unknown errnos stay unmarked (not retried)."""
    if isinstance(error, FileNotFoundError):
        return NotFoundError(f"{what}: not found")
    if isinstance(error, PermissionError) or error.errno == errno.EROFS:
        return PermissionDeniedError(f"{what}: permission denied")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"{what}: no space left on the target")
    if error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return BackendConfigError(f"{what}: a file is in the way of the repository's folders")
    return BackendError(f"{what}: {error.strerror or error}")


class LocalBackend(Backend):
    scheme = "file"
    concurrent_puts = 2  # each upload its own temporary file: two fsyncs wait at once

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def open(self) -> None:
        """Nothing to connect; folders are created by the first `put`, so reading creates nothing."""

    def close(self) -> None:
        pass

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put(self, key: str, source: BinaryIO) -> None:
        path = self._path(key)
        temp = self.root / temp_name(key)
        try:
            if not temp.parent.is_dir():
                make_folders(temp.parent)
            with os.fdopen(create_file(temp), "wb") as target:
                shutil.copyfileobj(source, target, _COPY_BUFFER)
                target.flush()
                os.fsync(target.fileno())
            os.replace(temp, path)
            _fsync_dir(path.parent)
        except OSError as error:
            _remove_quietly(temp)
            raise translate(error, key) from error
        except BaseException:
            _remove_quietly(temp)
            raise

    def _open(self, key: str) -> tuple[int, int]:
        """A descriptor of the regular file at `key` and its size, no link followed below the root."""
        *folders, name = validate_key(key).split("/")
        try:
            parent = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for folder in folders:
                    child = os.open(folder, _FOLDER, dir_fd=parent)
                    os.close(parent)
                    parent = child
                fd = os.open(name, _OBJECT, dir_fd=parent)
            finally:
                os.close(parent)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                raise IntegrityError(f"{key}: a symbolic link or another non-file is in its place") from None
            raise translate(error, key) from error
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise IntegrityError(f"{key}: not a regular file")
        return fd, st.st_size

    def get(self, key: str, sink: BinaryIO, limit: int = DEFAULT_LIMIT) -> None:
        fd, size = self._open(key)
        try:
            if size > limit:
                raise too_large(key, limit)
            with open(fd, "rb", closefd=False) as source:
                shutil.copyfileobj(source, limited(sink, key, limit), _COPY_BUFFER)
        except OSError as error:
            raise translate(error, key) from error
        finally:
            os.close(fd)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        fd, _size = self._open(key)
        try:
            data = os.pread(fd, length, offset)
        except OSError as error:
            raise translate(error, key) from error
        finally:
            os.close(fd)
        if len(data) != length:
            raise NotFoundError(f"{key}: range {offset}+{length} beyond the end")
        return data

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = os.lstat(self._path(key))
        except OSError as error:
            raise translate(error, key) from error
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"{key}: not found (not a file)")
        return ObjectInfo(key, st.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / validate_prefix(prefix) if prefix else self.root
        found: list[ObjectInfo] = []
        try:
            for key, path in self._files(base):
                if is_key(key):  # not a temporary or foreign file
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode):  # a link or a device is not an object (see `_open`)
                        found.append(ObjectInfo(key, st.st_size))
        except OSError as error:
            raise translate(error, prefix or ".") from error
        yield from sorted(found, key=lambda info: info.key)

    def _files(self, base: Path) -> Iterator[tuple[str, str]]:
        """(name relative to the root, path) of every file below `base`."""
        for folder, _dirs, files in os.walk(base):
            relative = os.path.relpath(folder, self.root)
            for name in files:
                yield (name if relative == "." else f"{relative}/{name}"), os.path.join(folder, name)

    def delete(self, key: str) -> None:
        _unlink(self._path(key), key)

    def list_temporary(self) -> Iterator[TemporaryInfo]:
        found: list[TemporaryInfo] = []
        try:
            for name, path in self._files(self.root):
                if is_temp_name(name):
                    with contextlib.suppress(FileNotFoundError):  # its upload just ended
                        found.append(TemporaryInfo(name, os.stat(path).st_mtime))
        except OSError as error:
            raise translate(error, ".") from error
        yield from sorted(found, key=lambda info: info.name)

    def delete_temporary(self, name: str) -> None:
        _unlink(self.root / validate_temp_name(name), name)

    def describe(self) -> str:
        return f"file://{self.root}"


def _unlink(path: Path, what: str) -> None:
    try:
        os.unlink(path)
    except OSError as error:
        raise translate(error, what) from error


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        return
