"""The SFTP backend's one table from paramiko, socket and SFTP errors to ours.

paramiko raises plain `SSHException`s for several connect-time problems and several of its
errors are `OSError`s, so the order of the checks matters: specific classes first, and what a
handshake failure means depends on whether the session was up (`connecting`).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import paramiko
from paramiko.sftp import SFTPError
from paramiko.ssh_exception import (
    AuthenticationException,
    BadAuthenticationType,
    BadHostKeyException,
    ChannelException,
    IncompatiblePeer,
    NoValidConnectionsError,
    PasswordRequiredException,
    SSHException,
)

from watcher.errors import (
    AuthError,
    BackendConfigError,
    BackendError,
    ConnectionLostError,
    NotFoundError,
    PermissionDeniedError,
    StorageFullError,
    TrustError,
)

_CONNECTION_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.ENOTCONN,
        errno.ESHUTDOWN,
    }
)
# Plain SSHException texts of a handshake in which the server failed to prove who it is.
_TRUST_MARKERS = ("signature verification", "host key", "out of range")
_NOT_SSH_MARKERS = ("indecipherable protocol version", "invalid ssh banner")
class UnknownHostKey(SSHException):
    """The server's key is not in the known_hosts file (and the policy is `strict`)."""

    def __init__(self, hostname: str, key: paramiko.PKey, known_hosts: Path) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key
        self.known_hosts = known_hosts


class RevokedHostKey(SSHException):
    """The server's key is marked `@revoked` in the known_hosts file."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


def translate(
    error: BaseException,
    what: str,
    *,
    connecting: bool = False,
    alive: bool = True,
    disk_full: bool = False,
) -> BackendError:
    """The one table from paramiko, socket and SFTP errors to ours.

    `connecting`: raised before the session was up (handshake, host key, login), where a plain
    `SSHException` may mean an untrustworthy server. `alive`: whether the SSH channel was still
    open, since a dead channel shows as a bare `OSError`. `disk_full`: the server reported little
    free space after a bare SFTP "Failure" on a write. Specific classes come before their bases
    (several paramiko errors are `OSError`s; `AuthenticationException` is an `SSHException`).
    """
    if isinstance(error, BackendError):
        return error
    if isinstance(error, socket.gaierror):
        return BackendConfigError(f"{what}: cannot resolve the host name ({error.strerror or error})")
    if isinstance(error, UnknownHostKey):
        return TrustError(
            f"{what}: the host key of {error.hostname} is not known ({error.key.get_name()} "
            f"{error.key.fingerprint}); add it to {error.known_hosts} or set BACKUP_SSH_HOST_KEY=accept-new"
        )
    if isinstance(error, RevokedHostKey):
        return TrustError(
            f"{what}: the host key of {error.hostname} ({error.key.get_name()} "
            f"{error.key.fingerprint}) is marked @revoked in the known_hosts file"
        )
    if isinstance(error, BadHostKeyException):
        return TrustError(
            f"{what}: the host key of {error.hostname} has CHANGED: the server offers "
            f"{error.key.get_name()} {error.key.fingerprint}, the known_hosts file expects "
            f"{error.expected_key.get_name()} {error.expected_key.fingerprint}; someone may be "
            "intercepting the connection; if the change is expected, remove the old entry "
            f"(ssh-keygen -R '{error.hostname}')"
        )
    if isinstance(error, PasswordRequiredException):
        return AuthError(f"{what}: the key file is encrypted; give its passphrase as BACKUP_TARGET_PASSWORD")
    if isinstance(error, BadAuthenticationType):
        allowed = ", ".join(error.allowed_types) or "none"
        return AuthError(f"{what}: the server does not accept this login method (it allows: {allowed})")
    if isinstance(error, AuthenticationException):
        return AuthError(f"{what}: the server refused the login (wrong user name, password or key)")
    if isinstance(error, NoValidConnectionsError):
        return ConnectionLostError(f"{what}: cannot connect ({error_text(error)})")
    if isinstance(error, TimeoutError):  # socket.timeout is TimeoutError
        return ConnectionLostError(f"{what}: timed out")
    if isinstance(error, ConnectionError):  # refused, reset, aborted, broken pipe
        return ConnectionLostError(f"{what}: connection lost ({error_text(error)})")
    if isinstance(error, EOFError):
        return ConnectionLostError(f"{what}: the server closed the connection")
    if isinstance(error, SSHException):
        return _translate_ssh(error, what, connecting)
    if isinstance(error, OSError):
        return _translate_os(error, what, alive=alive, disk_full=disk_full)
    if isinstance(error, SFTPError):
        if not alive:
            return ConnectionLostError(f"{what}: connection lost ({error_text(error)})")
        return BackendError(f"{what}: SFTP protocol error ({error_text(error)})")
    return BackendError(f"{what}: unexpected {type(error).__name__}: {error_text(error)}")


def _translate_ssh(error: SSHException, what: str, connecting: bool) -> BackendError:
    text = error_text(error)
    if isinstance(error, ChannelException):
        if error.code == paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
            return BackendConfigError(f"{what}: the server refused an SFTP session ({error.text})")
        return ConnectionLostError(f"{what}: the server could not open a channel ({error.text})")
    if not connecting:
        return ConnectionLostError(f"{what}: SSH session lost ({text})")
    if isinstance(error, IncompatiblePeer):
        return TrustError(f"{what}: no secure algorithms in common with the server ({text})")
    lowered = text.lower()
    if any(marker in lowered for marker in _TRUST_MARKERS):
        return TrustError(f"{what}: the server failed to prove its identity ({text})")
    if any(marker in lowered for marker in _NOT_SSH_MARKERS):
        return BackendConfigError(f"{what}: the server did not answer as an SSH server ({text})")
    return ConnectionLostError(f"{what}: SSH handshake failed ({text})")


def _translate_os(error: OSError, what: str, *, alive: bool, disk_full: bool) -> BackendError:
    code = error.errno
    if isinstance(error, FileNotFoundError) or code in (errno.ENOENT, errno.ENOTDIR):
        return NotFoundError(f"{what}: not found")
    if isinstance(error, PermissionError) or code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"{what}: permission denied")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(f"{what}: no space left on the server")
    if code in _CONNECTION_ERRNOS:
        return ConnectionLostError(f"{what}: connection lost ({error_text(error)})")
    if not alive:  # paramiko's "Socket is closed" and friends
        return ConnectionLostError(f"{what}: connection lost ({error_text(error)})")
    if disk_full:
        return StorageFullError(f"{what}: no space left on the server")
    text = error_text(error)
    if text == "Operation unsupported":
        return BackendConfigError(f"{what}: the server does not support a needed SFTP operation")
    return BackendError(f"{what}: the server answered: {text}")


def error_text(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
