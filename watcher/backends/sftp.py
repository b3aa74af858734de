"""An SFTP server, through paramiko, tuned to come near OpenSSH's throughput.

`paramiko.Transport` is driven directly rather than `SSHClient`: no agent, no `~/.ssh` key
search, no missing-host-key policy object, so what is trusted and which credentials are offered
is exactly what the settings say, on every machine. Host keys are checked against an OpenSSH
`known_hosts` file (`[host]:port` entries for other ports, hashed names, wildcards).

Speed: paramiko's defaults (32 KiB requests, one round trip per read) are many times slower than
OpenSSH. Writes are pipelined, reads prefetched, requests sized to the server's
`limits@openssh.com` answer, and the SSH window is widened. Paramiko drops the answers to
pipelined writes that are still pending at `close()`, so `_drain_writes` collects them first:
otherwise a write refused by a full disk would go unnoticed and a short object be renamed into
place.

Every exception of paramiko, of the socket layer and of the SFTP server goes through `translate`.
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
import socket
import stat as stat_mode
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NoReturn

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY, SFTPError
from paramiko.ssh_exception import (
    AuthenticationException,
    BadHostKeyException,
    PasswordRequiredException,
    SSHException,
)

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
    too_large,
    validate_key,
    validate_prefix,
    validate_temp_name,
    write_sink,
)
from watcher.backends.known_hosts import add_known_host, read_known_hosts
from watcher.backends.sftp_errors import RevokedHostKey, UnknownHostKey, error_text, translate
from watcher.errors import (
    AuthError,
    BackendConfigError,
    BackendError,
    IntegrityError,
    NotFoundError,
)

POLICIES = ("strict", "accept-new")
DEFAULT_PORT = 22

# Measured against OpenSSH 9.2 on loopback: a window wider than paramiko's 2 MiB lets the server
# stream prefetched reads without waiting for window adjustments (~20% faster gets).
_WINDOW_SIZE = 16 * 1024 * 1024
_MAX_PACKET_SIZE = 256 * 1024
_DEFAULT_REQUEST = 32 * 1024  # the size every SFTP server accepts
_MAX_REQUEST = 1024 * 1024
_FULL_MARGIN = 1024 * 1024  # less free space than this after a failed write: the disk is full
_FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
# OpenSSH names of the host key types paramiko can negotiate, for a known `ssh-rsa` key.
_KEY_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


def _bare_failure(error: BaseException) -> bool:
    """SFTP's status FAILURE, without errno: what OpenSSH answers for ENOSPC (and much else)."""
    return type(error) in (OSError, IOError) and error.errno is None


class SftpBackend(Backend):
    scheme = "sftp"

    def __init__(
        self,
        host: str,
        port: int | None = DEFAULT_PORT,
        user: str = "",
        password: str | None = None,
        key_file: str | Path | None = None,
        known_hosts: str | Path | None = None,
        host_key_policy: str = "strict",
        root: str = "/",
        *,
        timeout: float = 30.0,
        io_timeout: float = 120.0,
    ) -> None:
        if host_key_policy not in POLICIES:
            raise BackendConfigError(f"host key policy {host_key_policy!r} is not one of {', '.join(POLICIES)}")
        if not host:
            raise BackendConfigError("sftp target: no host name")
        if not user:
            raise BackendConfigError("sftp target: no user name")
        if not root.startswith("/"):
            raise BackendConfigError(f"sftp target: the path {root!r} is not absolute")
        self.host = host
        self.port = port or DEFAULT_PORT
        self.user = user
        self._password = password or None
        self.key_file = Path(key_file).expanduser() if key_file else None
        self.known_hosts = Path(known_hosts or "~/.ssh/known_hosts").expanduser()
        self.host_key_policy = host_key_policy
        self.root = posixpath.normpath(root) if root != "/" else "/"
        if self.root.startswith("//"):
            self.root = "/" + self.root.lstrip("/")
        self.timeout = timeout
        self.io_timeout = io_timeout
        self._sock: socket.socket | None = None
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._read_size = self._write_size = _DEFAULT_REQUEST

    def __repr__(self) -> str:
        return f"SftpBackend({self.describe()!r})"

    # -- connection ------------------------------------------------------------------------

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORT else f":{self.port}"
        return f"sftp://{self.user}@{host}{port}{self.root}"

    @property
    def host_key_name(self) -> str:
        """The name of the server in known_hosts, as OpenSSH writes it."""
        return self.host if self.port == DEFAULT_PORT else f"[{self.host}]:{self.port}"

    def open(self) -> None:
        if self._alive():
            return
        self.close()
        try:
            self._connect()
        except Exception as error:
            self._fail(error, self.describe(), connecting=True, then=self.close)
        except BaseException:
            self.close()
            raise
        try:
            self._prepare_root()
        except Exception as error:
            self._fail(error, self.root, then=self.close)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        sftp, transport, sock = self._sftp, self._transport, self._sock
        self._sftp = self._transport = self._sock = None
        for resource in (sftp, transport, sock):
            if resource is None:
                continue
            with contextlib.suppress(Exception):  # close never raises; the connection is gone anyway
                resource.close()
        # Transport.close() does not wait for its thread: join it, so nothing outlives us.
        if transport is not None and transport.is_alive() and transport is not threading.current_thread():
            transport.join(timeout=5)

    def _alive(self) -> bool:
        transport, sftp = self._transport, self._sftp
        return transport is not None and transport.is_active() and sftp is not None and not sftp.get_channel().closed

    def _session(self) -> paramiko.SFTPClient:
        """The SFTP client, connecting first if needed (the contract's "open on first use")."""
        if not self._alive():
            self.open()
        assert self._sftp is not None
        return self._sftp

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self._sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock, default_window_size=_WINDOW_SIZE, default_max_packet_size=_MAX_PACKET_SIZE)
        self._transport = transport
        transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = self.timeout
        known, revoked = read_known_hosts(self.known_hosts, self.host_key_name)
        _prefer_key_types(transport, known)
        _prefer_ciphers(transport)
        transport.start_client(timeout=self.timeout)
        self._check_host_key(transport.get_remote_server_key(), known, revoked)
        self._authenticate(transport)
        sftp = paramiko.SFTPClient.from_transport(transport, window_size=_WINDOW_SIZE, max_packet_size=_MAX_PACKET_SIZE)
        if sftp is None:
            raise SSHException("the server did not open an SFTP session")
        sftp.get_channel().settimeout(self.io_timeout)
        self._sftp = sftp
        self._read_size, self._write_size = _request_sizes(sftp)

    def _check_host_key(self, key: paramiko.PKey, known: list[paramiko.PKey], revoked: list[paramiko.PKey]) -> None:
        name = self.host_key_name
        if any(_same_key(key, bad) for bad in revoked):
            raise RevokedHostKey(name, key)
        if any(_same_key(key, good) for good in known):
            return
        if known:  # a different key, or a key of another type than the ones we know
            same_type = [good for good in known if good.get_name() == key.get_name()]
            raise BadHostKeyException(name, key, (same_type or known)[0])
        if self.host_key_policy != "accept-new":
            raise UnknownHostKey(name, key, self.known_hosts)
        add_known_host(self.known_hosts, name, key)

    def _authenticate(self, transport: paramiko.Transport) -> None:
        if self.key_file is None and self._password is None:
            raise AuthError(
                f"{self.describe()}: no password (BACKUP_TARGET_PASSWORD) and no key (BACKUP_SSH_KEY) given"
            )
        if self.key_file is not None:
            key, passphrase_used = self._load_key(self.key_file)
            try:
                transport.auth_publickey(self.user, key)
                return
            except AuthenticationException:
                if self._password is None or passphrase_used or not transport.is_active():
                    raise
        assert self._password is not None
        transport.auth_password(self.user, self._password)

    def _load_key(self, path: Path) -> tuple[paramiko.PKey, bool]:
        """The private key (Ed25519, ECDSA or RSA) and whether the password decrypted it."""
        try:
            try:
                return paramiko.PKey.from_path(path), False
            except (TypeError, PasswordRequiredException):  # cryptography: "password-protected"
                if self._password is None:
                    raise AuthError(
                        f"key file {path} is encrypted: give its passphrase as BACKUP_TARGET_PASSWORD"
                    ) from None
            try:
                return paramiko.PKey.from_path(path, self._password.encode()), True
            except (ValueError, SSHException):
                raise AuthError(f"key file {path}: cannot decrypt it with the given passphrase") from None
        except OSError as error:
            raise BackendConfigError(f"key file {path}: cannot read it ({error_text(error)})") from error
        except paramiko.UnknownKeyType:
            raise BackendConfigError(f"key file {path}: unsupported key type (use Ed25519, ECDSA or RSA)") from None
        except (ValueError, SSHException, TypeError) as error:
            raise BackendConfigError(f"key file {path}: not a private key ({error_text(error)})") from None

    def _prepare_root(self) -> None:
        """A root that exists must be a folder; a missing one is made by the first `put`."""
        sftp = self._sftp
        assert sftp is not None
        try:
            attributes = sftp.stat(self.root)
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise
            return  # the first upload creates it; reading an empty target creates nothing
        if attributes.st_mode is not None and not stat_mode.S_ISDIR(attributes.st_mode):
            raise BackendConfigError(f"{self.describe()}: {self.root} is not a folder")

    # -- errors ----------------------------------------------------------------------------

    def _fail(
        self,
        error: Exception,
        what: str,
        *,
        connecting: bool = False,
        folder: str | None = None,
        then: Callable[[], None] | None = None,
    ) -> NoReturn:
        """Translate and raise. `folder`: where a failed write was going, for the free-space
        check, which must come before `then` (cleanup: removing the temporary file frees space)."""
        disk_full = folder is not None and _bare_failure(error) and self._low_on_space(folder)
        translated = translate(error, what, connecting=connecting, alive=self._alive(), disk_full=disk_full)
        if then is not None:
            then()
        if translated is error:
            raise error
        if self._password and self._password in str(translated):
            translated = type(translated)(str(translated).replace(self._password, "***"))
        raise translated from error

    def _low_on_space(self, folder: str) -> bool:
        """Ask statvfs@openssh.com, as restic does, whether a bare "Failure" was a full disk."""
        if not self._alive():
            return False
        assert self._sftp is not None
        try:
            kind, message = self._sftp._request(CMD_EXTENDED, "statvfs@openssh.com", folder)
            if kind != CMD_EXTENDED_REPLY:
                return False
            _bsize, frsize, _blocks, _bfree, bavail, _files, _ffree, favail = (message.get_int64() for _ in range(8))
        except Exception:  # the check is a courtesy: without it, a plain BackendError
            return False
        return bavail * frsize < _FULL_MARGIN + self._write_size or favail == 0

    # -- objects ---------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, key)

    def put(self, key: str, source: BinaryIO) -> None:
        path = self._path(validate_key(key))
        temp = self._path(temp_name(key))
        sftp = self._session()
        try:
            self._upload(sftp, temp, source)
            sftp.posix_rename(temp, path)
        except CallerStreamError as wrapped:
            self._remove_quietly(temp)
            raise wrapped.error from None
        except Exception as error:
            self._fail(error, key, folder=posixpath.dirname(temp), then=lambda: self._remove_quietly(temp))
        except BaseException:
            # Interrupted between a request and its answer: the session's state is unknown, so
            # drop it rather than risk a hang; the hidden temporary file stays behind.
            self.close()
            raise

    def _upload(self, sftp: paramiko.SFTPClient, temp: str, source: BinaryIO) -> None:
        try:
            handle = sftp.open(temp, "wb")
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise
            _makedirs(sftp, posixpath.dirname(temp))
            handle = sftp.open(temp, "wb")
        with handle:
            handle.MAX_REQUEST_SIZE = self._write_size
            handle.set_pipelined(True)
            while chunk := read_source(source):
                handle.write(chunk)
            _drain_writes(sftp, handle)

    def get(self, key: str, sink: BinaryIO, limit: int = DEFAULT_LIMIT) -> None:
        path = self._path(validate_key(key))
        sftp = self._session()
        bounded = limited(sink, key, limit)
        try:
            with sftp.open(path, "rb") as handle:
                self._prepare_read(handle, key, limit)
                while data := handle.read(self._read_size):
                    write_sink(bounded, data)
        except CallerStreamError as wrapped:
            raise wrapped.error from None
        except IntegrityError:
            raise
        except Exception as error:
            self._fail(error, key)

    def get_bytes(self, key: str, limit: int = DEFAULT_LIMIT) -> bytes:
        """The whole object, read into one buffer of its size (no growing and copying)."""
        path = self._path(validate_key(key))
        sftp = self._session()
        try:
            with sftp.open(path, "rb") as handle:
                size = self._prepare_read(handle, key, limit)
                buffer = bytearray(size)
                view = memoryview(buffer)
                filled = 0
                while filled < size and (data := handle.read(min(self._read_size * 8, size - filled))):
                    view[filled : filled + len(data)] = data
                    filled += len(data)
                rest = handle.read(1)  # the object grew since stat(): never return a truncated copy
            if filled != size or rest:
                raise BackendError(f"{key}: its size changed while it was read")
        except IntegrityError:
            raise
        except Exception as error:
            self._fail(error, key)
        return bytes(buffer)

    def _prepare_read(self, handle: paramiko.SFTPFile, key: str, limit: int) -> int:
        """The size of an object about to be read whole, prefetching it; refuses what is not a
        regular file (a link to /dev/zero on the server) or is larger than `limit`."""
        handle.MAX_REQUEST_SIZE = self._read_size
        attributes = handle.stat()
        if attributes.st_mode is not None and not stat_mode.S_ISREG(attributes.st_mode):
            raise IntegrityError(f"{key}: not a regular file")
        size = attributes.st_size or 0
        if size > limit:
            raise too_large(key, limit)
        if size > self._read_size:
            handle.prefetch(size)
        return size

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(validate_key(key))
        sftp = self._session()
        data = bytearray()
        try:
            with sftp.open(path, "rb") as handle:
                handle.MAX_REQUEST_SIZE = self._read_size
                handle.seek(offset)
                if length > self._read_size:
                    handle.prefetch(offset + length)
                while len(data) < length:
                    piece = handle.read(min(self._read_size, length - len(data)))
                    if not piece:
                        break
                    data += piece
        except Exception as error:
            self._fail(error, key)
        if len(data) != length:
            raise NotFoundError(f"{key}: range {offset}+{length} beyond the end")
        return bytes(data)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(validate_key(key))
        sftp = self._session()
        try:
            attributes = sftp.stat(path)
        except Exception as error:
            self._fail(error, key)
        if attributes.st_mode is not None and not stat_mode.S_ISREG(attributes.st_mode):
            raise NotFoundError(f"{key}: not found (not a file)")
        return ObjectInfo(key, attributes.st_size or 0)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        found = [ObjectInfo(key, entry.st_size or 0) for key, entry in self._files(prefix) if is_key(key)]
        yield from sorted(found, key=lambda info: info.key)

    def _files(self, prefix: str) -> Iterator[tuple[str, paramiko.SFTPAttributes]]:
        """(name, attributes) of every file below `prefix`, in folders whose names are keys."""
        start = self._path(validate_prefix(prefix)) if prefix else self.root
        sftp = self._session()
        pending = [(start, prefix)]
        while pending:
            folder, relative = pending.pop()
            try:
                entries = sftp.listdir_attr(folder)
            except Exception as error:
                if isinstance(error, OSError) and error.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue  # a missing prefix, or a folder removed meanwhile
                self._fail(error, relative or ".")
            for entry in entries:
                name = f"{relative}/{entry.filename}" if relative else entry.filename
                mode = entry.st_mode or 0
                if stat_mode.S_ISDIR(mode) and is_key(name):
                    pending.append((posixpath.join(folder, entry.filename), name))
                elif stat_mode.S_ISREG(mode):
                    yield name, entry

    def list_temporary(self) -> Iterator[TemporaryInfo]:
        found = [TemporaryInfo(name, entry.st_mtime) for name, entry in self._files("") if is_temp_name(name)]
        yield from sorted(found, key=lambda info: info.name)

    def delete(self, key: str) -> None:
        self._remove(self._path(validate_key(key)), key)

    def delete_temporary(self, name: str) -> None:
        self._remove(self._path(validate_temp_name(name)), name)

    def _remove(self, path: str, what: str) -> None:
        sftp = self._session()
        try:
            sftp.remove(path)
        except Exception as error:
            self._fail(error, what)

    def _remove_quietly(self, path: str) -> None:
        if not self._alive():
            return
        assert self._sftp is not None
        with contextlib.suppress(Exception):  # best effort: a temporary name is hidden anyway
            self._sftp.remove(path)


# -- helpers -------------------------------------------------------------------------------


def _drain_writes(sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile) -> None:
    """Collect the answer to every pipelined write, raising the first refusal.

    paramiko only reads them while more than 100 are pending and silently drops the rest at
    `close()` (they are registered to no file), so a failed write would otherwise go unseen.
    """
    pending = handle._reqs
    while pending:
        sftp._read_response(pending.popleft())


def _makedirs(sftp: paramiko.SFTPClient, folder: str) -> None:
    """mkdir -p: try the folder itself first, since its parents usually exist."""
    try:
        sftp.mkdir(folder)
        return
    except OSError as error:
        failure = error
    if _is_folder(sftp, folder):
        return  # exists (SFTP says only "Failure"), maybe made by a concurrent writer
    parent = posixpath.dirname(folder)
    if failure.errno != errno.ENOENT or parent == folder:
        raise failure
    _makedirs(sftp, parent)
    try:
        sftp.mkdir(folder)
    except OSError:
        if not _is_folder(sftp, folder):
            raise


def _is_folder(sftp: paramiko.SFTPClient, path: str) -> bool:
    """Whether `path` is a folder; a file there is a configuration problem, not a failure."""
    try:
        mode = sftp.stat(path).st_mode or 0
    except OSError:
        return False
    if not stat_mode.S_ISDIR(mode):
        raise BackendConfigError(f"{path}: a file is in the way of a folder")
    return True


def _request_sizes(sftp: paramiko.SFTPClient) -> tuple[int, int]:
    """Read and write request sizes: the server's limits@openssh.com, else the safe 32 KiB.

    OpenSSH's sftp-server drops the session on a message over its limit (256 KiB), so bigger
    requests are only sent to a server that said it takes them.
    """
    try:
        kind, message = sftp._request(CMD_EXTENDED, "limits@openssh.com")
        if kind != CMD_EXTENDED_REPLY:
            return _DEFAULT_REQUEST, _DEFAULT_REQUEST
        _packet, read, write = (message.get_int64() for _ in range(3))
    except (OSError, SFTPError, EOFError):  # OSError("Operation unsupported") on other servers
        return _DEFAULT_REQUEST, _DEFAULT_REQUEST
    return (
        min(read, _MAX_REQUEST) if read > 0 else _DEFAULT_REQUEST,
        min(write, _MAX_REQUEST) if write > 0 else _DEFAULT_REQUEST,
    )


def _same_key(one: paramiko.PKey, other: paramiko.PKey) -> bool:
    return one.get_name() == other.get_name() and one.asbytes() == other.asbytes()


def _prefer_ciphers(transport: paramiko.Transport) -> None:
    """AES-GCM first: one pass in C instead of AES-CTR plus a separate HMAC (measured ~25%
    faster reads); OpenSSH servers offer it, others fall back to paramiko's own order."""
    options = transport.get_security_options()
    ciphers = list(options.ciphers)
    first = [name for name in _FAST_CIPHERS if name in ciphers]
    options.ciphers = first + [name for name in ciphers if name not in first]


def _prefer_key_types(transport: paramiko.Transport, known: list[paramiko.PKey]) -> None:
    """Ask first for the key types we know for this host, as OpenSSH does, so a host with
    several keys does not show one we have never seen."""
    if not known:
        return
    options = transport.get_security_options()
    available = list(options.key_types)
    wanted: list[str] = []
    for key in known:
        for algorithm in _KEY_ALGORITHMS.get(key.get_name(), (key.get_name(),)):
            if algorithm in available and algorithm not in wanted:
                wanted.append(algorithm)
    if wanted:
        options.key_types = wanted + [name for name in available if name not in wanted]
