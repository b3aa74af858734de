"""A dict-backed backend: the reference implementation of the contract, for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import BinaryIO

from watcher.backends.base import (
    DEFAULT_LIMIT,
    Backend,
    ObjectInfo,
    TemporaryInfo,
    is_temp_name,
    limited,
    validate_key,
    validate_prefix,
    validate_temp_name,
)
from watcher.errors import NotFoundError


class MemoryBackend(Backend):
    scheme = "memory"

    def __init__(self, name: str = "test") -> None:
        self.name = name
        self.objects: dict[str, bytes] = {}
        self.stray: dict[str, tuple[bytes, float | None]] = {}  # not keys, with a time: as crashes leave
        self._lock = threading.Lock()

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def put(self, key: str, source: BinaryIO) -> None:
        data = source.read()
        with self._lock:
            self.objects[validate_key(key)] = bytes(data)

    def _data(self, key: str) -> bytes:
        try:
            return self.objects[validate_key(key)]
        except KeyError:
            raise NotFoundError(f"{key}: not found") from None

    def get(self, key: str, sink: BinaryIO, limit: int = DEFAULT_LIMIT) -> None:
        limited(sink, key, limit).write(self._data(key))

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        data = self._data(key)[offset : offset + length]
        if len(data) != length:
            raise NotFoundError(f"{key}: range {offset}+{length} beyond the end")
        return data

    def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self._data(key)))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = validate_prefix(prefix) + "/" if prefix else ""
        with self._lock:
            items = sorted((k, len(v)) for k, v in self.objects.items() if k.startswith(start))
        for key, size in items:
            yield ObjectInfo(key, size)

    def delete(self, key: str) -> None:
        with self._lock:
            if self.objects.pop(validate_key(key), None) is None:
                raise NotFoundError(f"{key}: not found")

    def list_temporary(self) -> Iterator[TemporaryInfo]:
        with self._lock:
            items = sorted((name, mtime) for name, (_data, mtime) in self.stray.items() if is_temp_name(name))
        for name, mtime in items:
            yield TemporaryInfo(name, mtime)

    def delete_temporary(self, name: str) -> None:
        with self._lock:
            if self.stray.pop(validate_temp_name(name), None) is None:
                raise NotFoundError(f"{name}: not found")

    def describe(self) -> str:
        return f"memory://{self.name}"
