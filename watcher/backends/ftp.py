"""An FTP or explicit FTPS server, through `ftplib`, over one reused control connection.

One connection serves a whole run: a put costs EPSV, STOR, RNFR and RNTO on it, and small
objects are few anyway since the repository packs them (watcher/pack.py). Uploads go to a
hidden temporary name, then RNFR/RNTO onto the key, so a partial upload is never visible; a
server that refuses renames is refused in turn, since nothing could then be made atomic.
Downloads resume with REST after a dropped data connection; `read_range` reads with REST and
closes the data connection as soon as it has its bytes.

FTP says "550" for a missing object, a refused permission and a folder alike, so a 550 on
RETR or DELE is followed by SIZE to tell "not found" from "permission denied". A missing root
is created by the first upload, never by a read. Paths reach the server only through
`ftp_client.line`, which refuses CR, LF and NUL (keys cannot hold them: `validate_key`).

Every exception of ftplib, ssl and the socket layer goes through `ftp_errors.translate`; the
protocol's steps and the TLS plumbing are in `ftp_client`.
"""

from __future__ import annotations

import contextlib
import ftplib
import logging
import posixpath
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO, NoReturn

from watcher.backends.base import (
    DEFAULT_LIMIT,
    Backend,
    CallerStreamError,
    ObjectInfo,
    TemporaryInfo,
    is_key,
    is_temp_name,
    limited,
    read_source,
    temp_name,
    validate_key,
    validate_prefix,
    validate_temp_name,
    write_sink,
)
from watcher.backends.ftp_client import (
    ClientMixin,
    Cut,
    RenameRefused,
    code_of,
    line,
    open_session,
    tls_context,
)
from watcher.backends.ftp_errors import translate
from watcher.backends.ftp_listing import Entry
from watcher.errors import AuthError, BackendConfigError, BackendError, NotFoundError, is_transient

log = logging.getLogger(__name__)

DEFAULT_PORT = 21
_IDLE_CHECK_SECONDS = 60.0  # idle longer than this: NOOP first, since servers drop idle sessions
_RESUMES = 3  # REST resumptions of one download, each after some progress
_QUIT_SECONDS = 2.0


class FtpBackend(Backend):
    """ftp:// (`tls=False`) or explicit ftps:// (`tls=True`): one connection, used under a lock."""

    def __init__(
        self,
        host: str,
        port: int | None = DEFAULT_PORT,
        user: str = "",
        password: str | None = None,
        root: str = "/",
        tls: bool = True,
        *,
        tls_ca_file: str | None = None,
        tls_verify: bool = True,
        timeout: float = 60.0,
    ) -> None:
        self.scheme = "ftps" if tls else "ftp"
        if not host:
            raise BackendConfigError(f"{self.scheme} target: no host name")
        if not user:
            raise BackendConfigError(f"{self.scheme} target: no user name")
        if not root.startswith("/") or any(c in root for c in "\r\n\0"):
            raise BackendConfigError(f"{self.scheme} target: the path {root!r} is not an absolute path")
        if any(c in f"{user}{password or ''}" for c in "\r\n\0"):
            raise BackendConfigError(f"{self.scheme} target: a line break in the user name or password")
        self.host = host
        self.port = port or DEFAULT_PORT
        self.user = user
        self._password = password or ""
        self.root = "/" + "/".join(part for part in root.split("/") if part)
        self.tls = tls
        self.tls_ca_file = str(tls_ca_file) if tls_ca_file else None
        self.tls_verify = tls_verify
        self.timeout = timeout
        self.logins = 0  # connections made: one per run unless the network fails
        self._ftp: ClientMixin | None = None
        self._last_used = 0.0
        self._warned = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"FtpBackend({self.describe()!r})"

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORT else f":{self.port}"
        return f"{self.scheme}://{self.user}@{host}{port}{self.root}"

    # -- connection ------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._ftp is not None:
                return
            self._warn_once()
            try:
                self._ftp = self._connect()
            except Exception as error:
                self._fail(error, self.describe(), connecting=True)
            self.logins += 1
            self._last_used = time.monotonic()

    def close(self) -> None:
        """QUIT politely (briefly: the server may be gone), then release the sockets."""
        ftp = self._ftp
        if ftp is not None:
            with contextlib.suppress(Exception):  # close never raises; the session ends anyway
                ftp.sock.settimeout(_QUIT_SECONDS)
                ftp.voidcmd("QUIT")
        self._drop()

    def _drop(self) -> None:
        """Release the sockets without a word: after a failure the reply stream is out of step."""
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            with contextlib.suppress(Exception):
                ftp.close()

    def reconnect(self) -> None:
        self._drop()
        self.open()

    def _warn_once(self) -> None:
        """Once per backend, that is once per run's log."""
        if self._warned:
            return
        self._warned = True
        if not self.tls:
            log.warning("%s: plain FTP: the transfer is unencrypted (password and data travel in clear text); "
                        "use ftps:// if the server offers it", self.describe())
        elif not self.tls_verify:
            log.warning("%s: BACKUP_TLS_VERIFY=false: the server's certificate and host name are NOT verified",
                        self.describe())

    def _connect(self) -> ClientMixin:
        context = tls_context(self.tls_ca_file, self.tls_verify) if self.tls else None
        try:
            ftp = open_session(self.host, self.port, self.user, self._password, context, self.timeout)
        except ftplib.error_perm as error:
            if not self._password and isinstance(translate(error, ""), AuthError):
                raise AuthError(f"{self.describe()}: the server wants a password (BACKUP_TARGET_PASSWORD)") from error
            raise
        try:  # a root that is a file is a configuration error; a missing one waits for the first put
            if self.root != "/" and not ftp.is_folder(self.root) and ftp.size(self.root) is not None:
                raise BackendConfigError(f"{self.describe()}: {self.root} is not a folder")
        except BaseException:
            ftp.close()
            raise
        return ftp

    def _session(self) -> ClientMixin:
        """The connection, opened on first use; checked with NOOP after a long idle time."""
        if self._ftp is not None and self._ftp.sock is None:  # it closed itself after a failure
            self._drop()
        if self._ftp is not None and time.monotonic() - self._last_used > _IDLE_CHECK_SECONDS:
            try:
                self._ftp.voidcmd("NOOP")
            except Exception:  # dropped while idle (421 timeout, reset): start afresh
                self._drop()
        if self._ftp is None:
            self.open()
        assert self._ftp is not None
        self._last_used = time.monotonic()
        return self._ftp

    # -- errors ----------------------------------------------------------------------------

    def _fail(self, error: Exception, what: str, *, connecting: bool = False, missing: bool = False) -> NoReturn:
        translated = translate(error, what, connecting=connecting, missing=missing)
        if is_transient(translated) or not isinstance(error, (ftplib.Error, BackendError, RenameRefused)):
            self._drop()  # the session's state is unknown: the next operation reconnects
        if translated is error:
            raise error
        if self._password and self._password in str(translated):
            translated = type(translated)(str(translated).replace(self._password, "***"))
        raise translated from error

    def _fail_absent_or_denied(self, error: Exception, ftp: ClientMixin, path: str, what: str) -> NoReturn:
        """After a 550 on an object, SIZE tells a missing object from a refused one."""
        missing = False
        if isinstance(error, ftplib.error_perm) and code_of(error) == "550":
            with contextlib.suppress(ftplib.error_perm):
                missing = ftp.size(path) is None
        self._fail(error, what, missing=missing)

    # -- objects ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, key)

    def put(self, key: str, source: BinaryIO) -> None:
        path = self._path(validate_key(key))
        temp = self._path(temp_name(key))
        with self._lock:
            ftp = self._session()
            try:
                ftp.store(temp, lambda: read_source(source))
                ftp.replace(temp, path)
            except CallerStreamError as wrapped:
                self._remove_quietly(temp)
                raise wrapped.error from None
            except Exception as error:
                if isinstance(error, (ftplib.error_perm, ftplib.error_temp, RenameRefused)):
                    self._remove_quietly(temp)  # the session is in step: clean up
                self._fail(error, key)
            except BaseException:
                self._drop()  # interrupted mid-command: the reply stream is out of step
                raise

    def get(self, key: str, sink: BinaryIO, limit: int = DEFAULT_LIMIT) -> None:
        path = self._path(validate_key(key))
        sink = limited(sink, key, limit)  # more than that: the download is aborted, the error raised
        with self._lock:
            ftp = self._session()
            received = resumes = 0
            while True:
                start = received
                try:
                    ftp.retrieve(path, lambda data: write_sink(sink, data), received)
                    return
                except CallerStreamError as wrapped:
                    raise wrapped.error from None
                except Cut as cut:
                    received, error = cut.received, cut.error
                except ftplib.error_perm as refused:
                    self._fail_absent_or_denied(refused, ftp, path, key)
                except Exception as other:
                    error = other
                if received == start or resumes >= _RESUMES or isinstance(error, ftplib.error_perm):
                    self._fail(error, key)
                resumes += 1
                log.info("%s: download interrupted after %d bytes (%s); resuming", key, received, error)
                self._drop()
                ftp = self._session()

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(validate_key(key))
        if length == 0:
            self.stat(key)
            return b""
        with self._lock:
            ftp = self._session()
            try:
                data = ftp.read_range(path, offset, length)
            except ftplib.error_perm as refused:
                self._fail_absent_or_denied(refused, ftp, path, key)
            except Exception as error:
                self._fail(error, key)
        if len(data) != length:
            raise NotFoundError(f"{key}: range {offset}+{length} beyond the end")
        return data

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(validate_key(key))
        with self._lock:
            ftp = self._session()
            try:
                size = ftp.size(path)
            except Exception as error:
                self._fail(error, key)
        if size is None:
            raise NotFoundError(f"{key}: not found")
        return ObjectInfo(key, size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            found = [ObjectInfo(name, entry.size) for name, entry in self._files(prefix) if is_key(name)]
        yield from sorted(found, key=lambda info: info.key)

    def _files(self, prefix: str) -> list[tuple[str, Entry]]:
        """(name, entry) of every file below `prefix`, in folders whose names are keys."""
        start = self._path(validate_prefix(prefix)) if prefix else self.root
        found: list[tuple[str, Entry]] = []
        ftp = self._session()
        try:
            # LIST of a file lists the file: make sure the prefix is a folder first.
            pending = [(start, prefix)] if ftp.is_folder(start) else []
            while pending:
                folder, relative = pending.pop()
                for entry in ftp.entries(folder):
                    name = f"{relative}/{entry.name}" if relative else entry.name
                    if entry.kind == "dir" and is_key(name):  # never `.` and `..`
                        pending.append((posixpath.join(folder, entry.name), name))
                    elif entry.kind == "file":
                        found.append((name, entry))
        except Exception as error:
            self._fail(error, prefix or ".")
        return found

    def list_temporary(self) -> Iterator[TemporaryInfo]:
        with self._lock:
            names = [name for name, _entry in self._files("") if is_temp_name(name)]
            ftp = self._session()
            try:  # a LIST time is local, coarse or without a year: ask MDTM (UTC) for the few temporaries
                found = [TemporaryInfo(name, ftp.modified(self._path(name))) for name in sorted(names)]
            except Exception as error:
                self._fail(error, ".")
        yield from found

    def delete(self, key: str) -> None:
        self._remove(self._path(validate_key(key)), key)

    def delete_temporary(self, name: str) -> None:
        self._remove(self._path(validate_temp_name(name)), name)

    def _remove(self, path: str, what: str) -> None:
        with self._lock:
            ftp = self._session()
            try:
                ftp.voidcmd(line("DELE", path))
            except ftplib.error_perm as refused:
                self._fail_absent_or_denied(refused, ftp, path, what)
            except Exception as error:
                self._fail(error, what)

    def _remove_quietly(self, path: str) -> None:
        if self._ftp is None or self._ftp.sock is None:
            return
        try:
            self._ftp.voidcmd(line("DELE", path))
        except (ftplib.error_perm, ftplib.error_temp):
            pass  # best effort: a temporary name is hidden anyway
        except Exception:
            self._drop()
