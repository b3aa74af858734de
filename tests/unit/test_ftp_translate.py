"""The FTP translation table: every reply code and exception of ftplib, ssl and the socket layer
maps to the error class that decides whether it is retried. Also the pieces of the FTP client
that need no server: listing parsers, passive mode fallback, paths that could inject commands.
No sockets."""

from __future__ import annotations

import errno
import ftplib
import socket
import ssl
from typing import Any

import pytest

from watcher.backends import create_backend
from watcher.backends.ftp import FtpBackend
from watcher.backends.ftp_client import FtpClient, RenameRefused, TlsRefused, first_line, line
from watcher.backends.ftp_errors import translate
from watcher.backends.ftp_listing import Entry, parse_list, parse_mlsd
from watcher.config import load_settings
from watcher.errors import (
    AuthError,
    BackendConfigError,
    BackendError,
    ConnectionLostError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    StorageFullError,
    TemporaryFailureError,
    TransientError,
    TrustError,
    is_transient,
)

pytestmark = pytest.mark.timeout(30)

PASSWORD = "Secret-Pass-4711"


def cert_error(message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    error.verify_message = message  # type: ignore[attr-defined]  # what the ssl module sets
    error.reason = "CERTIFICATE_VERIFY_FAILED"  # type: ignore[attr-defined]
    return error


def ssl_error(cls: type[ssl.SSLError], reason: str) -> ssl.SSLError:
    error = cls(1, f"[SSL: {reason}] {reason.lower()}")
    error.reason = reason  # type: ignore[attr-defined]
    return error


# (exception, keyword arguments of translate, expected class)
TABLE: list[tuple[BaseException, dict[str, Any], type[BackendError]]] = [
    # 4xx and a reply stream out of step: transient
    (ftplib.error_temp("421 Timeout."), {}, ConnectionLostError),
    (ftplib.error_temp("421 There are too many connections from your internet address."), {"connecting": True},
     ConnectionLostError),
    (ftplib.error_temp("425 Failed to establish connection."), {}, ConnectionLostError),
    (ftplib.error_temp("426 Failure writing network stream."), {}, ConnectionLostError),
    (ftplib.error_temp("450 Requested file action not taken."), {}, TemporaryFailureError),
    (ftplib.error_temp("451 Failure writing to local file."), {}, TemporaryFailureError),
    (ftplib.error_temp("452 Insufficient storage space."), {}, TemporaryFailureError),
    (ftplib.error_perm("522 SSL connection failed: session reuse required"), {}, TemporaryFailureError),
    (ftplib.error_reply("227 Entering Passive Mode (127,0,0,1,4,1)."), {}, ConnectionLostError),
    (ftplib.error_proto("garbage"), {}, ConnectionLostError),
    # the network: transient
    (EOFError(), {}, ConnectionLostError),
    (EOFError(), {"connecting": True}, ConnectionLostError),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), {"connecting": True}, ConnectionLostError),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), {}, ConnectionLostError),
    (ConnectionAbortedError(errno.ECONNABORTED, "Software caused connection abort"), {}, ConnectionLostError),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), {}, ConnectionLostError),
    (TimeoutError("timed out"), {}, ConnectionLostError),
    (TimeoutError(errno.ETIMEDOUT, "timed out"), {"connecting": True}, ConnectionLostError),  # = socket.timeout
    (OSError(errno.ENETUNREACH, "Network is unreachable"), {"connecting": True}, ConnectionLostError),
    (ssl_error(ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING"), {}, ConnectionLostError),
    (ssl_error(ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING"), {"connecting": True}, ConnectionLostError),
    (ssl_error(ssl.SSLZeroReturnError, "ZERO_RETURN"), {}, ConnectionLostError),
    (ssl_error(ssl.SSLError, "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"), {}, ConnectionLostError),
    # the login: permanent
    (ftplib.error_perm("530 Login incorrect."), {"connecting": True}, AuthError),
    (ftplib.error_perm("530 Please login with USER and PASS."), {}, AuthError),
    (ftplib.error_perm("332 Need account for login."), {"connecting": True}, AuthError),
    (ftplib.error_perm("530 Non-anonymous sessions must use encryption."), {"connecting": True}, BackendConfigError),
    (ftplib.error_perm("534 Policy requires SSL."), {"connecting": True}, BackendConfigError),
    (TlsRefused("530 Please login with USER and PASS."), {"connecting": True}, BackendConfigError),
    # trust: permanent
    (cert_error("self-signed certificate"), {"connecting": True}, TrustError),
    (cert_error("unable to get local issuer certificate"), {"connecting": True}, TrustError),
    (cert_error("Hostname mismatch, certificate is not valid for 'example.org'."), {"connecting": True}, TrustError),
    (ssl_error(ssl.SSLError, "WRONG_VERSION_NUMBER"), {"connecting": True}, BackendConfigError),
    (ssl_error(ssl.SSLError, "TLSV1_ALERT_PROTOCOL_VERSION"), {"connecting": True}, BackendConfigError),
    # objects and folders: permanent
    (ftplib.error_perm("550 Failed to open file."), {"missing": True}, NotFoundError),
    (ftplib.error_perm("550 Delete operation failed."), {"missing": True}, NotFoundError),
    (ftplib.error_perm("550 Failed to open file."), {}, PermissionDeniedError),
    (ftplib.error_perm("550 Permission denied."), {}, PermissionDeniedError),
    (ftplib.error_perm("553 Could not create file."), {}, PermissionDeniedError),
    (ftplib.error_perm("552 Disk quota exceeded."), {}, StorageFullError),
    (RenameRefused("550 Permission denied."), {}, BackendConfigError),
    (ftplib.error_perm("500 Unknown command."), {}, BackendConfigError),
    (ftplib.error_perm("502 Command not implemented."), {}, BackendConfigError),
    (ftplib.error_perm("504 Command not implemented for that parameter."), {}, BackendConfigError),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), {"connecting": True}, BackendConfigError),
]


@pytest.mark.parametrize(("error", "options", "expected"), TABLE, ids=lambda value: repr(value)[:60])
def test_translation_table(error: BaseException, options: dict[str, Any], expected: type[BackendError]) -> None:
    translated = translate(error, "ftps://backup@example.org/srv", **options)
    assert type(translated) is expected
    assert is_transient(translated) == issubclass(expected, TransientError)
    assert isinstance(translated, TransientError) != isinstance(translated, PermanentError)  # exactly one marker
    message = str(translated)
    assert message.startswith("ftps://backup@example.org/srv: ")
    assert "\n" not in message and "\r" not in message


def test_unknown_exceptions_are_neither_retried_nor_hidden() -> None:
    translated = translate(ValueError("something new"), "key")
    assert type(translated) is BackendError
    assert not isinstance(translated, (TransientError, PermanentError))
    assert "ValueError" in str(translated) and "something new" in str(translated)


def test_our_own_errors_pass_through() -> None:
    error = NotFoundError("already ours")
    assert translate(error, "key") is error


def test_messages_say_what_to_do() -> None:
    trust = str(translate(cert_error("self-signed certificate"), "ftps://u@host.example:2121/b", connecting=True))
    assert "host.example" in trust and "self-signed certificate" in trust
    assert "BACKUP_TLS_CA_FILE" in trust and "BACKUP_TLS_VERIFY=false" in trust
    rename = str(translate(RenameRefused("550 Permission denied."), "config"))
    assert "refuses renames" in rename and "atomic" in rename and "550 Permission denied." in rename
    plain = str(translate(ftplib.error_perm("530 Non-anonymous sessions must use encryption."), "ftp://u@h/x"))
    assert "ftps://" in plain
    auth = str(translate(ftplib.error_perm("530 Login incorrect."), "ftp://u@h/x", connecting=True))
    assert "refused the login" in auth
    assert str(translate(ftplib.error_perm("550 Failed to open file."), "k", missing=True)) == "k: not found"


def test_multi_line_replies_become_one_line() -> None:
    reply = ftplib.error_perm("530-Login incorrect.\n530-Your attempt was logged.\n530 Goodbye.")
    assert str(translate(reply, "x")).count("\n") == 0
    assert first_line("550 bad\r\nname\x00") == "550 bad"
    assert first_line("") == ""


def test_the_password_never_reaches_a_message() -> None:
    backend = FtpBackend("example.org", 2121, "backup", PASSWORD, "/srv/backups", tls=True)
    for text in (backend.describe(), repr(backend), str(vars(backend).get("password", ""))):
        assert PASSWORD not in text
    assert backend.describe() == "ftps://backup@example.org:2121/srv/backups"
    assert FtpBackend("h", 21, "u", "p", "/", tls=False).describe() == "ftp://u@h/"


# -- paths that could inject commands ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/a\r\nDELE /b", "/a\nb", "/a\rb", "/a\x00b"])
def test_a_path_with_a_line_break_is_never_sent(path: str) -> None:
    with pytest.raises(BackendConfigError):
        line("STOR", path)
    with pytest.raises(BackendConfigError):
        FtpBackend("h", 21, "u", "p", path)


@pytest.mark.parametrize("root", ["relative/path", ""])
def test_the_root_must_be_absolute(root: str) -> None:
    with pytest.raises(BackendConfigError):
        FtpBackend("h", 21, "u", "p", root)


def test_the_root_is_normalised() -> None:
    assert FtpBackend("h", 21, "u", "p", "//srv//backups/").root == "/srv/backups"


# -- the scheme registry -------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ftp", "ftps"])
def test_create_backend(scheme: str, tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection is made")
    settings = load_settings(
        {"BACKUP_TARGET": f"{scheme}://backup@example.org:2121/srv/b", "BACKUP_TARGET_PASSWORD": PASSWORD,
         "BACKUP_TLS_CA_FILE": str(ca), "BACKUP_TLS_VERIFY": "false"}
    )
    backend = create_backend(settings)
    assert isinstance(backend, FtpBackend)
    assert (backend.scheme, backend.host, backend.port, backend.user, backend.root) == (
        scheme, "example.org", 2121, "backup", "/srv/b")
    assert backend.tls == (scheme == "ftps")
    assert backend.tls_ca_file == str(ca) and backend.tls_verify is False
    assert backend.describe() == f"{scheme}://backup@example.org:2121/srv/b"


# -- passive mode ------------------------------------------------------------------------------------


class FakeSocket:
    def getpeername(self) -> tuple[str, int]:
        return ("192.0.2.7", 21)


def client_answering(answers: dict[str, str | Exception]) -> tuple[FtpClient, list[str]]:
    client = FtpClient()
    client.sock = FakeSocket()  # type: ignore[assignment]
    sent: list[str] = []

    def sendcmd(command: str) -> str:
        sent.append(command)
        answer = answers[command]
        if isinstance(answer, Exception):
            raise answer
        return answer

    client.sendcmd = sendcmd  # type: ignore[method-assign]
    return client, sent


def test_epsv_first() -> None:
    client, sent = client_answering({"EPSV": "229 Entering Extended Passive Mode (|||31007|)"})
    assert client.makepasv() == ("192.0.2.7", 31007)
    assert sent == ["EPSV"]


def test_pasv_when_epsv_is_unknown_and_its_address_is_not_trusted() -> None:
    client, sent = client_answering(
        {"EPSV": ftplib.error_perm("500 Unknown command."), "PASV": "227 Entering Passive Mode (10,0,0,1,121,28)."}
    )
    assert client.makepasv() == ("192.0.2.7", 121 * 256 + 28)  # the control peer, not 10.0.0.1
    assert client.makepasv() == ("192.0.2.7", 121 * 256 + 28)
    assert sent == ["EPSV", "PASV", "PASV"]  # EPSV is not asked again


def test_other_epsv_refusals_are_not_hidden() -> None:
    client, _sent = client_answering({"EPSV": ftplib.error_perm("530 Please login with USER and PASS.")})
    with pytest.raises(ftplib.error_perm):
        client.makepasv()


# -- listings ------------------------------------------------------------------------------------


def test_unix_list() -> None:
    text = "\r\n".join([
        "total 12",
        "drwxr-xr-x    2 ftp      ftp          4096 Nov 26 13:35 data",
        "-rw-r--r--    1 ftp      ftp      16777216 Nov 26 13:35 0a1b",
        "-rw-r--r--    1 1001     1001            3 Jan  1  2024 .config.tmp-0123456789ab",
        "lrwxrwxrwx    1 ftp      ftp             4 Nov 26 13:35 link -> data",
        "-rw-r--r--  1 owner  5 2024-01-31 08:00 iso-date",
        "-rw-r--r-- 1 owner 7 Nov 26 13:35 no-group",
    ])  # fmt: skip
    assert list(parse_list(text)) == [
        Entry("data", "dir", 4096),
        Entry("0a1b", "file", 16777216),
        Entry(".config.tmp-0123456789ab", "file", 3),
        Entry("link -> data", "other", 4),
        Entry("iso-date", "file", 5),
        Entry("no-group", "file", 7),
    ]


def test_dos_list() -> None:
    text = "11-26-24  01:35PM       <DIR>          data\r\n11-26-24  01:35PM              1234 config\r\n"
    assert list(parse_list(text)) == [Entry("data", "dir", 0), Entry("config", "file", 1234)]


def test_mlsd() -> None:
    text = "\r\n".join([
        "type=cdir;modify=20240101000000; /srv/backups",
        "type=pdir;modify=20240101000000; /srv",
        "type=dir;modify=20240101000000;perm=flcdmpe; data",
        "type=file;size=1234;modify=20240101000000;perm=adfrw; config",
        "Type=File;Size=0; empty",
        "type=OS.unix=symlink;size=4; link",
        "no facts here",
    ])  # fmt: skip
    assert list(parse_mlsd(text)) == [
        Entry("/srv/backups", "other", 0),
        Entry("/srv", "other", 0),
        Entry("data", "dir", 0),
        Entry("config", "file", 1234),
        Entry("empty", "file", 0),
        Entry("link", "other", 4),
        Entry("facts here", "other", 0),  # not MLSD: ignored as "other"
    ]
