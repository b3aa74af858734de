"""The one table from ftplib, ssl and socket errors to ours, for `watcher.backends.ftp`.

FTP reply codes carry the meaning: 4xx is "try again" (transient), 5xx is "no" (permanent),
with exceptions worth knowing. 421 means the server closed the session; 522 is vsftpd refusing
a data connection's TLS session (an expired one is transient); a 530 that mentions encryption
means the server wants ftps://; 550 means absent, forbidden or not a file alike, so the caller
says which (`missing`). Kept apart from the backend so that the table reads, and is tested, as
one piece (tests/unit/test_ftp_translate.py).
"""

from __future__ import annotations

import ftplib
import socket
import ssl

from watcher.backends.ftp_client import RenameRefused, TlsRefused, first_line
from watcher.errors import (
    AuthError,
    BackendConfigError,
    BackendError,
    ConnectionLostError,
    NotFoundError,
    PermissionDeniedError,
    StorageFullError,
    TemporaryFailureError,
    TrustError,
)

_TLS_WORDS = ("encrypt", "ssl", "tls", "secure")


def translate(error: BaseException, what: str, *, connecting: bool = False, missing: bool = False) -> BackendError:
    """The one table from ftplib, ssl and socket errors to ours.

    `connecting`: raised while connecting or logging in. `missing`: the object was found absent
    after a 550 (FTP's one code for absent, forbidden and not a file). Specific classes before
    their bases: every ssl error is an OSError, a certificate error a ValueError too.
    """
    if isinstance(error, BackendError):
        return error
    if isinstance(error, RenameRefused):
        return BackendConfigError(
            f"{what}: the server refuses renames ({first_line(error)}), so uploads cannot be made atomic; "
            "allow RNFR/RNTO for this account"
        )
    if isinstance(error, TlsRefused):
        return BackendConfigError(f"{what}: the server does not offer explicit TLS (AUTH TLS: {first_line(error)})")
    if isinstance(error, ftplib.Error):
        return _translate_reply(error, what, missing=missing)
    if isinstance(error, socket.gaierror):
        return BackendConfigError(f"{what}: cannot resolve the host name ({error.strerror or error})")
    if isinstance(error, ssl.SSLCertVerificationError):
        return TrustError(
            f"{what}: the server's certificate cannot be trusted ({_ssl_reason(error)}); "
            "give its CA in BACKUP_TLS_CA_FILE, or set BACKUP_TLS_VERIFY=false (insecure)"
        )
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ssl.SSLWantReadError)):
        return ConnectionLostError(f"{what}: TLS connection lost ({_ssl_reason(error)})")
    if isinstance(error, ssl.SSLError):
        if connecting:
            return BackendConfigError(f"{what}: TLS handshake failed ({_ssl_reason(error)})")
        return ConnectionLostError(f"{what}: TLS error ({_ssl_reason(error)})")
    if isinstance(error, TimeoutError):  # socket.timeout is TimeoutError
        return ConnectionLostError(f"{what}: timed out")
    if isinstance(error, ConnectionError):  # refused, reset, aborted, broken pipe
        return ConnectionLostError(f"{what}: connection lost ({error.strerror or error})")
    if isinstance(error, EOFError):
        return ConnectionLostError(f"{what}: the server closed the connection")
    if isinstance(error, OSError):
        return ConnectionLostError(f"{what}: network error ({error.strerror or error})")
    return BackendError(f"{what}: unexpected {type(error).__name__}: {error}")


def _translate_reply(error: ftplib.Error, what: str, *, missing: bool) -> BackendError:
    reply = first_line(error) or type(error).__name__
    code = reply[:3]
    if isinstance(error, (ftplib.error_reply, ftplib.error_proto)):  # the reply stream is out of step
        return ConnectionLostError(f"{what}: unexpected reply from the server ({reply})")
    if code == "522":  # a data connection's TLS session: expired, or not resumed
        return TemporaryFailureError(f"{what}: the server refused the TLS session of a data connection ({reply})")
    if isinstance(error, ftplib.error_temp):
        if code == "421":
            return ConnectionLostError(f"{what}: the server closed the session ({reply})")
        if code in ("425", "426"):
            return ConnectionLostError(f"{what}: data connection failed ({reply})")
        if code == "452":
            return TemporaryFailureError(f"{what}: not enough space on the server for now ({reply})")
        return TemporaryFailureError(f"{what}: the server says to try again later ({reply})")
    if code in ("530", "534") and any(word in reply.lower() for word in _TLS_WORDS):
        return BackendConfigError(f"{what}: the server requires TLS: use an ftps:// target ({reply})")
    if code in ("530", "331", "332"):
        return AuthError(f"{what}: the server refused the login (wrong user name or password: {reply})")
    if code == "552":
        return StorageFullError(f"{what}: no space left on the server ({reply})")
    if code == "550" and missing:
        return NotFoundError(f"{what}: not found")
    if code in ("550", "553"):
        return PermissionDeniedError(f"{what}: permission denied ({reply})")
    if code in ("500", "501", "502", "504"):
        return BackendConfigError(f"{what}: the server does not support a needed FTP command ({reply})")
    return BackendError(f"{what}: the server answered: {reply}")


def _ssl_reason(error: ssl.SSLError) -> str:
    """OpenSSL's reason ("self-signed certificate", "WRONG_VERSION_NUMBER"), else the text."""
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    return first_line(reason or error.strerror or error)
