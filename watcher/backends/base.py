"""The backend contract: bytes at keys on a dumb store.

A backend is one connection to one place. It knows nothing of the repository format; the
repository above it only ever sees keys. Each concrete backend translates its library's
exceptions into `watcher.errors` in one place (its `translate` function), so the retrying
wrapper can tell transient from permanent failures without guessing.
"""

from __future__ import annotations

import io
import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from watcher.errors import BackendConfigError, IntegrityError, NotFoundError

TEMP_MARKER = ".tmp-"
# What a read may bring when the caller states no bound (lock documents): the server is not
# trusted, so no read is ever unbounded (docs/FORMAT.md, "Limits").
DEFAULT_LIMIT = 16 * 1024 * 1024
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TEMP_TOKEN_HEX = 12
_TEMP = re.compile(rf"\.{_PART.pattern}{re.escape(TEMP_MARKER)}[0-9a-f]{{{_TEMP_TOKEN_HEX}}}")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


@dataclass(frozen=True)
class TemporaryInfo:
    """A temporary name an interrupted upload left, and when it was last written to (Unix
    seconds by the server's clock; None when the server does not say)."""

    name: str
    mtime: float | None


IO_CHUNK = 256 * 1024  # how much a network backend reads from a source or writes to a sink at once


class CallerStreamError(Exception):
    """An exception of the caller's source or sink, carried past a backend's translation table.

    A failing source (an unreadable file) or sink (a full local disk) is not the server's fault:
    the backend re-raises the original exception instead of translating it.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def read_source(source: BinaryIO) -> bytes:
    try:
        return source.read(IO_CHUNK)
    except Exception as error:
        raise CallerStreamError(error) from error


def write_sink(sink: BinaryIO, data: bytes) -> None:
    try:
        sink.write(data)
    except Exception as error:
        raise CallerStreamError(error) from error


def too_large(key: str, limit: int) -> IntegrityError:
    return IntegrityError(f"{key}: larger than the {limit} bytes it may hold")


class _Limited:
    """A sink that refuses to take more than `limit` bytes: an object that never ends (a link
    to /dev/zero) or that is far larger than expected is cut short instead of filling memory."""

    def __init__(self, sink: BinaryIO, key: str, limit: int) -> None:
        self.sink = sink
        self.key = key
        self.room = limit
        self.limit = limit

    def write(self, data: bytes) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise too_large(self.key, self.limit)
        return self.sink.write(data)


def limited(sink: BinaryIO, key: str, limit: int) -> BinaryIO:
    return _Limited(sink, key, limit)  # type: ignore[return-value]


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative name, else raise.

    Keys travel into paths and FTP commands: only `[A-Za-z0-9._-]` parts separated by `/`,
    none empty, none starting with a dot, so no `..`, no CR/LF and no temporary names can
    ever reach a server or come back from a listing.
    """
    parts = key.split("/")
    if not key or any(not _PART.fullmatch(part) for part in parts) or TEMP_MARKER in key:
        raise BackendConfigError(f"invalid object key {key!r}")
    return key


def is_key(name: str) -> bool:
    """Whether a listed name is a key; temporary and foreign names are not (hidden from `list`)."""
    try:
        validate_key(name)
    except BackendConfigError:
        return False
    return True


def validate_prefix(prefix: str) -> str:
    """A listing prefix is a key, or empty for everything."""
    return validate_key(prefix) if prefix else prefix


def temp_name(key: str) -> str:
    """The name an upload is written under before it is renamed onto `key`.

    It starts with a dot so it can never pass `validate_key`, hence is hidden from `list`.
    """
    head, _, name = key.rpartition("/")
    temp = f".{name}{TEMP_MARKER}{secrets.token_hex(_TEMP_TOKEN_HEX // 2)}"
    return f"{head}/{temp}" if head else temp


def is_temp_name(name: str) -> bool:
    """Whether `name` has exactly the form `temp_name` gives (in folders that are keys)."""
    head, _, last = name.rpartition("/")
    return bool(_TEMP.fullmatch(last)) and (not head or is_key(head))


def validate_temp_name(name: str) -> str:
    """Return `name` if it is a temporary name, else raise: only those may be removed as leftovers."""
    if not is_temp_name(name):
        raise BackendConfigError(f"not a temporary name: {name!r}")
    return name


class _Pieces:
    """A sink that keeps what it is given and joins it once: no buffer grown and copied again
    and again for a 16 MiB pack. `seek(0)` + `truncate()` (a retry starting over) empty it."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.pieces.append(bytes(data))
        return len(data)

    def tell(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    def seek(self, position: int) -> int:
        if position != 0:
            raise io.UnsupportedOperation("only a rewind to the start")
        return 0

    def truncate(self) -> int:
        self.pieces.clear()
        return 0


class Backend(ABC):
    """One connection to a store of objects under relative keys.

    Every method may raise a `BackendError`; those carrying `TransientError` may be retried
    after `reconnect()`. Methods other than `close` open the connection on first use.
    """

    scheme: str = ""
    # How many `put` calls may run at once, from as many threads, on this one object: 1 for one
    # connection (SFTP, FTP), more where each request stands alone (S3's HTTP requests).
    concurrent_puts: int = 1

    @abstractmethod
    def open(self) -> None:
        """Connect and log in; idempotent. Raises AuthError, TrustError, ConnectionLostError."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection. Never raises: it runs in `finally` blocks."""

    def reconnect(self) -> None:
        """Drop and reopen the connection; called before each retry of a failed operation."""
        self.close()
        self.open()

    @abstractmethod
    def put(self, key: str, source: BinaryIO) -> None:
        """Store the bytes of `source` (read to its end) under `key`.

        Writes a temporary name and renames it onto `key`, so a partial upload is never
        visible under `key`; replaces an existing object; creates missing folders.
        """

    @abstractmethod
    def get(self, key: str, sink: BinaryIO, limit: int = DEFAULT_LIMIT) -> None:
        """Write the whole object into `sink`. Raises NotFoundError when absent, IntegrityError
        when it holds more than `limit` bytes (having written at most `limit` of them)."""

    @abstractmethod
    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """Return `length` bytes from `offset`. Raises NotFoundError; short data is an error."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size of the object. Raises NotFoundError when absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under the folder `prefix`, recursively, sorted by key.

        Temporary names are hidden; a missing prefix yields nothing.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object. Raises NotFoundError when absent."""

    @abstractmethod
    def list_temporary(self) -> Iterator[TemporaryInfo]:
        """Every temporary name (`is_temp_name`) left by an interrupted upload, sorted by name.

        Unlike `list`, only those: foreign names are never touched.
        """

    @abstractmethod
    def delete_temporary(self, name: str) -> None:
        """Remove a temporary name `list_temporary` gave. Raises NotFoundError when absent."""

    @abstractmethod
    def describe(self) -> str:
        """Where this backend points, without credentials, for logs and mails."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFoundError:
            return False
        return True

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put(key, io.BytesIO(data))

    def get_bytes(self, key: str, limit: int = DEFAULT_LIMIT) -> bytes:
        sink = _Pieces()
        self.get(key, sink, limit)  # type: ignore[arg-type]
        return b"".join(sink.pieces)

    def __enter__(self) -> Backend:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
