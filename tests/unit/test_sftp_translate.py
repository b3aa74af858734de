"""The SFTP translation table: every exception paramiko, the socket layer or an SFTP server
raises maps to the error class that decides whether it is retried. No sockets."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import paramiko
import pytest
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

from watcher.backends.sftp_errors import RevokedHostKey, UnknownHostKey, translate
from watcher.errors import (
    AuthError,
    BackendConfigError,
    BackendError,
    ConnectionLostError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    StorageFullError,
    TransientError,
    TrustError,
    is_transient,
)

pytestmark = pytest.mark.timeout(30)

KEY = paramiko.ECDSAKey.generate()
OTHER_KEY = paramiko.ECDSAKey.generate()
KNOWN_HOSTS = Path("/home/someone/.ssh/known_hosts")
REFUSED = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

# (exception, keyword arguments of translate, expected class)
TABLE = [
    # the network: transient
    (TimeoutError("timed out"), {}, ConnectionLostError),
    (TimeoutError(errno.ETIMEDOUT, "timed out"), {"connecting": True}, ConnectionLostError),  # = socket.timeout
    (REFUSED, {"connecting": True}, ConnectionLostError),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), {}, ConnectionLostError),
    (ConnectionAbortedError(errno.ECONNABORTED, "aborted"), {}, ConnectionLostError),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), {}, ConnectionLostError),
    (EOFError(), {}, ConnectionLostError),
    (EOFError(), {"connecting": True}, ConnectionLostError),
    (NoValidConnectionsError({("127.0.0.1", 22): REFUSED}), {"connecting": True}, ConnectionLostError),
    (OSError(errno.EHOSTUNREACH, "No route to host"), {"connecting": True}, ConnectionLostError),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), {}, ConnectionLostError),
    (OSError("Socket is closed"), {"alive": False}, ConnectionLostError),
    (OSError("Failure"), {"alive": False}, ConnectionLostError),
    (SFTPError("Garbage packet received"), {"alive": False}, ConnectionLostError),
    # an SSH session that breaks after it was up: transient, whatever the text
    (SSHException("Server connection dropped: "), {}, ConnectionLostError),
    (SSHException("SSH session not active"), {}, ConnectionLostError),
    (SSHException("Signature verification (ssh-ed25519) failed."), {}, ConnectionLostError),
    (ChannelException(2, "Connect failed"), {}, ConnectionLostError),
    (ChannelException(4, "Resource shortage"), {"connecting": True}, ConnectionLostError),
    # plain SSHException during the handshake: the network, or an untrustworthy server
    (SSHException("Error reading SSH protocol banner[Errno 104] reset"), {"connecting": True}, ConnectionLostError),
    (SSHException("Negotiation failed."), {"connecting": True}, ConnectionLostError),
    (SSHException("Key-exchange timed out waiting for key negotiation"), {"connecting": True}, ConnectionLostError),
    (SSHException("No existing session"), {"connecting": True}, ConnectionLostError),
    (SSHException("Signature verification (ssh-ed25519) failed."), {"connecting": True}, TrustError),
    (SSHException("Bad host key from server"), {"connecting": True}, TrustError),
    (SSHException('Server kex "f" is out of range'), {"connecting": True}, TrustError),
    (SSHException("Unknown host key type"), {"connecting": True}, TrustError),
    (IncompatiblePeer("Incompatible ssh peer (no acceptable host key)"), {"connecting": True}, TrustError),
    (SSHException('Indecipherable protocol version "HTTP/1.1 400"'), {"connecting": True}, BackendConfigError),
    # host keys: permanent
    (BadHostKeyException("[h]:2222", KEY, OTHER_KEY), {"connecting": True}, TrustError),
    (UnknownHostKey("[h]:2222", KEY, KNOWN_HOSTS), {"connecting": True}, TrustError),
    (RevokedHostKey("h", KEY), {"connecting": True}, TrustError),
    # logins: permanent, checked before their SSHException base
    (AuthenticationException("Authentication failed."), {"connecting": True}, AuthError),
    (BadAuthenticationType("Bad authentication type", ["publickey"]), {"connecting": True}, AuthError),
    (PasswordRequiredException("Private key file is encrypted"), {"connecting": True}, AuthError),
    (paramiko.ssh_exception.PartialAuthentication(["publickey"]), {"connecting": True}, AuthError),
    # configuration
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), {"connecting": True}, BackendConfigError),
    (ChannelException(1, "Administratively prohibited"), {"connecting": True}, BackendConfigError),
    (OSError("Operation unsupported"), {}, BackendConfigError),
    # SFTP status codes, as paramiko raises them
    (OSError(errno.ENOENT, "No such file"), {}, NotFoundError),
    (FileNotFoundError(errno.ENOENT, "No such file"), {}, NotFoundError),
    (OSError(errno.EACCES, "Permission denied"), {}, PermissionDeniedError),
    (PermissionError(errno.EACCES, "Permission denied"), {}, PermissionDeniedError),
    (OSError(errno.ENOSPC, "No space left on device"), {}, StorageFullError),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), {}, StorageFullError),
    (OSError("Failure"), {"disk_full": True}, StorageFullError),
    # unknown: a bare BackendError, neither retried nor mistaken for a known permanent cause
    (OSError("Failure"), {}, BackendError),
    (SFTPError("Expected data"), {}, BackendError),
    (ValueError("something new"), {}, BackendError),
    (RuntimeError("something else"), {"connecting": True}, BackendError),
]


@pytest.mark.parametrize(
    ("error", "context", "expected"),
    TABLE,
    ids=[f"{type(error).__name__}-{error}-{context}"[:90] for error, context, _ in TABLE],
)
def test_translate(error: BaseException, context: dict[str, bool], expected: type[BackendError]) -> None:
    translated = translate(error, "sftp://u@h/repo", **context)
    assert type(translated) is expected
    message = str(translated)
    assert message.startswith("sftp://u@h/repo: ")
    assert "\n" not in message
    assert is_transient(translated) == (expected is ConnectionLostError)
    if expected is BackendError:
        assert not isinstance(translated, (TransientError, PermanentError))


def test_our_own_errors_pass_through() -> None:
    error = AuthError("already translated")
    assert translate(error, "x") is error


def test_unknown_host_message_tells_what_to_do() -> None:
    message = str(translate(UnknownHostKey("[127.0.0.1]:2222", KEY, KNOWN_HOSTS), "where"))
    assert "[127.0.0.1]:2222" in message
    assert KEY.fingerprint in message and KEY.fingerprint.startswith("SHA256:")
    assert str(KNOWN_HOSTS) in message
    assert "BACKUP_SSH_HOST_KEY=accept-new" in message


def test_changed_host_key_message_names_both_keys() -> None:
    message = str(translate(BadHostKeyException("[h]:2222", KEY, OTHER_KEY), "where"))
    assert "CHANGED" in message
    assert KEY.fingerprint in message and OTHER_KEY.fingerprint in message


def test_socket_errors_are_checked_before_os_errors() -> None:
    """`socket.gaierror` and `NoValidConnectionsError` are OSErrors without a useful errno."""
    assert issubclass(socket.gaierror, OSError) and issubclass(NoValidConnectionsError, OSError)
    assert type(translate(socket.gaierror(-2, "unknown"), "x", alive=False)) is BackendConfigError
    refused = NoValidConnectionsError({("::1", 22): REFUSED})
    assert type(translate(refused, "x", alive=False)) is ConnectionLostError
