"""FTP and FTPS against a real vsftpd: logins, certificates, TLS session reuse, lost servers,
refused renames, and the whole CLI (backup, snapshots, ls, diff, restore, check) over ftps://.

Each failure must arrive as the error class that decides retrying (see watcher/errors.py),
with one clear line for the user that never holds the password.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trustme

from tests.fixtures.ftp import FTP_TEST_PASSWORD, FTP_TEST_USER, USER_SCRIPT, FtpServer
from tests.helpers import describe_tree, make_tree
from watcher import cli, retry
from watcher.backends import ftp as ftp_module
from watcher.backends import ftp_client
from watcher.backends.ftp import FtpBackend
from watcher.backends.ftp_client import FtpsClient
from watcher.errors import (
    AuthError,
    BackendConfigError,
    ConnectionLostError,
    NotFoundError,
    PermissionDeniedError,
    TemporaryFailureError,
    TrustError,
    is_transient,
)
from watcher.retry import RetryingBackend, RetryPolicy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Instance = Callable[..., AbstractContextManager[FtpServer]]


@contextlib.contextmanager
def opened(backend: FtpBackend) -> Iterator[FtpBackend]:
    try:
        backend.open()
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=["ftp", "ftps"])
def server(request: pytest.FixtureRequest) -> FtpServer:
    found: FtpServer = request.getfixturevalue(f"{request.param}_server")
    if found.local:
        found.start()  # a test that stopped it and then failed must not break the next
    return found


def test_user_script_and_fixture_agree() -> None:
    script = USER_SCRIPT.read_text()
    assert re.search(rf"^FTP_USER={re.escape(FTP_TEST_USER)}$", script, re.MULTILINE)
    assert re.search(rf"^FTP_PASSWORD={re.escape(FTP_TEST_PASSWORD)}$", script, re.MULTILINE)


# -- logins and certificates ---------------------------------------------------------------


def test_login_and_one_connection_for_many_operations(server: FtpServer) -> None:
    backend = server.backend()
    with opened(backend):
        for number in range(50):
            backend.put_bytes(f"data/{number:02d}/object", os.urandom(number * 100))
        assert len(list(backend.list("data"))) == 50
        assert backend.get_bytes("data/07/object") == backend.read_range("data/07/object", 0, 700)
    assert backend.logins == 1
    assert backend.describe() == f"{server.scheme}://{server.user}@{server.host}:{server.port}{backend.root}"


def test_wrong_password(server: FtpServer) -> None:
    secret = "Wrong-Secret-4711"
    backend = server.backend(password=secret)
    with pytest.raises(AuthError) as caught:
        backend.open()
    assert not is_transient(caught.value)
    assert "refused the login" in str(caught.value)
    for text in (str(caught.value), backend.describe(), repr(backend)):
        assert secret not in text


def test_untrusted_certificate(ftps_server: FtpServer, tmp_path: Path) -> None:
    ftps_server.need_local()  # an external server may well have a publicly trusted certificate
    with pytest.raises(TrustError) as caught:
        ftps_server.backend(tls_ca_file=None).open()  # the system store does not know the test CA
    message = str(caught.value)
    assert ftps_server.host in message and "BACKUP_TLS_CA_FILE" in message and "BACKUP_TLS_VERIFY" in message
    assert "\n" not in message
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    with pytest.raises(TrustError):
        ftps_server.backend(tls_ca_file=str(stranger)).open()


def test_host_name_is_verified(vsftpd_instance: Instance, tmp_path: Path) -> None:
    authority = trustme.CA()
    wrong = tmp_path / "wrong-name.pem"
    authority.issue_cert("ftp.example.org").private_key_and_cert_chain_pem.write_to_path(str(wrong))
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    with vsftpd_instance(tls=True, options=[f"rsa_cert_file={wrong}", f"rsa_private_key_file={wrong}"]) as server:
        with pytest.raises(TrustError, match="address mismatch"):
            server.backend(tls_ca_file=str(ca_file)).open()
        with opened(server.backend(tls_ca_file=None, tls_verify=False)) as backend:  # BACKUP_TLS_VERIFY=false
            backend.put_bytes("k", b"v")


def test_tls_verify_false_works_and_warns(ftps_server: FtpServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), opened(ftps_server.backend(tls_ca_file=None, tls_verify=False)) as backend:
        backend.put_bytes("unverified", b"x")
        assert backend.get_bytes("unverified") == b"x"
    assert "NOT verified" in caplog.text


def test_plain_ftp_warns_once_that_it_is_unencrypted(ftp_server: FtpServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), opened(ftp_server.backend()) as backend:
        backend.put_bytes("k", b"v")
        backend.reconnect()
        backend.put_bytes("k", b"w")
    assert len([record for record in caplog.records if "unencrypted" in record.getMessage()]) == 1


def test_plain_client_against_the_tls_server(ftps_server: FtpServer) -> None:
    ftps_server.need_local()  # force_local_logins_ssl=YES
    with pytest.raises(BackendConfigError, match="requires TLS"):
        ftps_server.backend(tls=False).open()


def test_tls_client_against_the_plain_server(ftp_server: FtpServer, ftps_server: FtpServer) -> None:
    with pytest.raises(BackendConfigError, match="does not offer explicit TLS"):
        ftp_server.backend(tls=True, tls_ca_file=ftps_server.ca_file).open()


def test_unknown_host_name(server: FtpServer) -> None:
    with pytest.raises(BackendConfigError, match="resolve"):
        server.backend(host="no-such-host.invalid").open()


# -- TLS on data connections -------------------------------------------------------------------


def test_every_data_connection_resumes_the_tls_session(ftps_server: FtpServer) -> None:
    ftps_server.need_local()
    before = ftps_server.log_text()
    with opened(ftps_server.backend()) as backend:
        for number in range(3):  # the second and third transfers matter: a first one proves little
            data = os.urandom(100_000 + number)
            backend.put_bytes(f"reuse/{number}", data)
            assert backend.get_bytes(f"reuse/{number}") == data
            assert backend.read_range(f"reuse/{number}", 10, 20) == data[10:30]  # closed early
        assert [info.key for info in backend.list("reuse")] == ["reuse/0", "reuse/1", "reuse/2"]
    log = ftps_server.log_text()[len(before) :]
    handshakes = re.findall(r'"SSL version: (\S+), SSL cipher: \S+, (reused|not reused)', log)
    assert handshakes[0][1] == "not reused"  # the control connection
    assert len(handshakes) > 10 and all(kind == "reused" for _version, kind in handshakes[1:])
    assert log.count("OK UPLOAD") == 3
    assert log.count("OK DOWNLOAD") + log.count("FAIL DOWNLOAD") == 6  # a range read may end in either
    assert "without SSL shutdown" not in log and "Buggy client" not in log  # close_notify on every upload


class NoReuseClient(FtpsClient):
    """What plain ftplib does: a fresh TLS session on each data connection."""

    def data_session(self) -> None:
        return None


def test_the_server_refuses_data_connections_without_session_reuse(
    ftps_server: FtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixture really runs vsftpd with require_ssl_reuse=YES, and the refusal reads clearly."""
    ftps_server.need_local()
    monkeypatch.setattr(ftp_client, "FtpsClient", NoReuseClient)
    with opened(ftps_server.backend()) as backend, pytest.raises(TemporaryFailureError, match="TLS session"):
        backend.put_bytes("never", b"x")


def test_an_upload_cut_without_close_notify_is_refused(ftps_server: FtpServer) -> None:
    """strict_ssl_read_eof=YES: the server treats a data connection closed without TLS shutdown
    as truncated, which is why every upload ends with close_notify."""
    ftps_server.need_local()
    with opened(ftps_server.backend()) as backend:
        backend.put_bytes("folder/first", b"x")
        ftp = backend._session()
        conn, _size = ftp.ntransfercmd(f"STOR {backend.root}/folder/cut")
        conn.sendall(b"partial")
        conn.close()  # no unwrap
        assert ftp.any_reply().startswith("4")
        backend.put_bytes("folder/after", b"y")  # the session is still usable
        assert backend.get_bytes("folder/after") == b"y"


# -- lost servers -----------------------------------------------------------------------------


def test_connection_refused_while_the_server_is_down(server: FtpServer) -> None:
    server.stop()
    try:
        with pytest.raises(ConnectionLostError) as caught:
            server.backend().open()
        assert is_transient(caught.value)
    finally:
        server.start()


def test_reconnect_after_the_server_restarts(server: FtpServer) -> None:
    data = os.urandom(3 * 1024 * 1024)
    with opened(server.backend()) as backend:
        backend.put_bytes("before", data)
        server.stop()
        try:
            with pytest.raises(ConnectionLostError):
                backend.get_bytes("before")
            with pytest.raises(ConnectionLostError):
                backend.put_bytes("during", data)
            with pytest.raises(ConnectionLostError):
                backend.reconnect()
        finally:
            server.start()
        backend.reconnect()
        assert backend.get_bytes("before") == data
        backend.put_bytes("after", data)
        assert [info.key for info in backend.list()] == ["after", "before"]


class RestartingSink(io.BytesIO):
    """Restarts the server once, after the first piece of a download has arrived."""

    def __init__(self, server: FtpServer) -> None:
        super().__init__()
        self.server = server
        self.restarted = False

    def write(self, data: Any) -> int:
        written = super().write(data)
        if not self.restarted:
            self.restarted = True
            self.server.stop()
            self.server.start()
        return written


def test_a_download_resumes_where_it_was_cut(server: FtpServer) -> None:
    server.need_local()
    data = os.urandom(40 * 1024 * 1024)
    with opened(server.backend()) as backend:
        backend.put_bytes("big", data)
        before = server.log_text()
        sink = RestartingSink(server)
        backend.get("big", sink, len(data))
        assert sink.restarted and sink.getvalue() == data
        assert backend.logins == 2
    assert re.search(r'"REST [1-9]\d*"', server.log_text()[len(before) :])


def test_an_idle_session_closed_by_the_server(vsftpd_instance: Instance, monkeypatch: pytest.MonkeyPatch) -> None:
    """vsftpd says 421 and hangs up after idle_session_timeout: transient, and a NOOP after a
    long pause finds out before an operation fails."""
    with vsftpd_instance(tls=True, options=["idle_session_timeout=1"]) as server:
        backend = server.backend()
        with opened(backend):
            backend.put_bytes("k", b"v")
            _wait_for_hang_up(backend)
            with pytest.raises(ConnectionLostError) as caught:
                backend.get_bytes("k")
            assert is_transient(caught.value)
            assert RetryingBackend(backend, RetryPolicy(3, 0.01, 0.01)).get_bytes("k") == b"v"
            monkeypatch.setattr(ftp_module, "_IDLE_CHECK_SECONDS", 0.5)
            _wait_for_hang_up(backend)
            assert backend.get_bytes("k") == b"v"  # NOOP failed, reconnected, then the operation
            assert backend.logins == 3


def _wait_for_hang_up(backend: FtpBackend) -> None:
    ftp = backend._ftp
    assert ftp is not None
    ftp.sock.settimeout(10)
    with contextlib.suppress(Exception):
        ftp.getresp()  # "421 Timeout." arrives after a second
    ftp.sock.settimeout(backend.timeout)


# -- the server's file system -----------------------------------------------------------------


def test_reads_never_create_the_root(server: FtpServer) -> None:
    root = f"{server.scratch('lazy-root')}/a/b"
    with opened(server.backend(root=root)) as backend:
        with pytest.raises(NotFoundError):
            backend.get_bytes("config")
        with pytest.raises(NotFoundError):
            backend.read_range("config", 0, 1)
        assert not backend.exists("config")
        assert list(backend.list()) == []
        if server.local:
            assert not Path(root).parent.exists()
        backend.put_bytes("config", b"made")
    with opened(server.backend(root=root)) as again:
        assert again.get_bytes("config") == b"made"


def test_root_that_is_a_file(server: FtpServer) -> None:
    folder = server.scratch("file-root")
    with opened(server.backend(root=folder)) as backend:
        backend.put_bytes("plain", b"x")
    with pytest.raises(BackendConfigError, match="not a folder"):
        server.backend(root=f"{folder}/plain").open()


def test_root_where_the_user_may_not_write(server: FtpServer) -> None:
    server.need_local()  # /root is out of reach only on the local server
    with opened(server.backend(root="/root/watcher-cannot-be-here")) as backend:
        with pytest.raises(PermissionDeniedError):
            backend.put_bytes("k", b"v")
        with pytest.raises(NotFoundError):
            backend.get_bytes("k")


def test_a_file_in_the_way_of_a_folder(server: FtpServer) -> None:
    with opened(server.backend()) as backend:
        backend.put_bytes("data", b"a file")
        with pytest.raises(BackendConfigError, match="in the way"):
            backend.put_bytes("data/object", b"x")
        assert backend.get_bytes("data") == b"a file"


def test_permission_denied(server: FtpServer) -> None:
    server.need_local()
    with opened(server.backend()) as backend:
        backend.put_bytes("locked/existing", b"keep me")
        backend.put_bytes("secret", b"hidden")
        locked = Path(backend.root) / "locked"
        os.chown(locked, 0, 0)
        locked.chmod(0o555)
        secret = Path(backend.root) / "secret"
        os.chown(secret, 0, 0)
        secret.chmod(0o600)
        with pytest.raises(PermissionDeniedError) as caught:
            backend.put_bytes("locked/new", b"x")
        assert not is_transient(caught.value)
        with pytest.raises(PermissionDeniedError):
            backend.put_bytes("locked/sub/new", b"x")
        with pytest.raises(PermissionDeniedError):
            backend.delete("locked/existing")
        with pytest.raises(PermissionDeniedError):
            backend.get_bytes("secret")
        with pytest.raises(PermissionDeniedError):
            backend.read_range("secret", 0, 1)
        assert backend.stat("secret").size == 6
        assert backend.get_bytes("locked/existing") == b"keep me"
        assert sorted(os.listdir(locked)) == ["existing"]  # no temporary file left behind


def test_a_server_that_refuses_renames(vsftpd_instance: Instance) -> None:
    with vsftpd_instance(tls=True, options=["cmds_denied=RNFR,RNTO"]) as server, opened(server.backend()) as backend:
        with pytest.raises(BackendConfigError, match="refuses renames") as caught:
            backend.put_bytes("data/object", b"x")
        assert not is_transient(caught.value)
        assert "atomic" in str(caught.value)
        assert list(backend.list()) == []
        assert os.listdir(Path(backend.root) / "data") == []  # the temporary upload was removed


# -- the command line over FTPS and FTP -----------------------------------------------------------


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> None:
        self.capsys = capsys
        self.env = env

    def __call__(self, *argv: str, **overrides: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli.main(list(argv), {**self.env, **overrides})
        out, err = self.capsys.readouterr()
        assert "Traceback" not in out + err
        assert self.env["BACKUP_TARGET_PASSWORD"] not in out + err
        return int(code), out, err

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 0, (code, out, err)
        return out


def error_lines(err: str) -> list[str]:
    return [text for text in err.splitlines() if text.startswith("error:")]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    files: dict[str, bytes | str] = {
        f"small/{n // 100:02d}/{n:04d}.txt": os.urandom(50 + n % 3000) for n in range(3000)
    }
    files.update({"large/one.bin": os.urandom(20 * 1024 * 1024), "large/two.bin": os.urandom(3 * 1024 * 1024)})
    return make_tree(tmp_path / "src", files)


def cli_for(server: FtpServer, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    env = {"BACKUP_SOURCES": str(source), "BACKUP_ENCRYPTION": "none",
           "BACKUP_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path)}
    env.update(server.env(server.scratch("cli")))
    return Cli(capsys, env)


def restored(cli_run: Cli, tmp_path: Path, source: Path, *argv: str) -> dict[str, tuple]:
    target = tmp_path / f"restore-{len(list(tmp_path.glob('restore-*')))}"
    cli_run.ok("restore", "latest", "--to", str(target), *argv)
    return describe_tree(target / source.relative_to("/"))


def test_the_commands_over_ftps(ftps_server: FtpServer, source: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    run = cli_for(ftps_server, source, tmp_path, capsys)
    logins = ftps_server.logins() if ftps_server.local else 0
    assert "snapshot" in run.ok("backup")
    if ftps_server.local:
        assert ftps_server.logins() - logins == 1  # 3002 files, one FTPS session
    assert restored(run, tmp_path, source) == describe_tree(source)

    (source / "small" / "00" / "0001.txt").write_bytes(b"changed")
    (source / "added.txt").write_bytes(b"new")
    run.ok("backup")
    listed = json.loads(run.ok("snapshots", "--json"))
    assert len(listed) == 2
    first, second = listed[0]["id"], listed[1]["id"]
    difference = run.ok("diff", first, second)
    assert f"+ {source}/added.txt" in difference and f"M {source}/small/00/0001.txt" in difference
    entries = run.ok("ls", "latest", str(source / "large"))
    assert "one.bin" in entries and "two.bin" in entries
    one_file = restored(run, tmp_path, source, str(source / "small" / "00" / "0001.txt"))  # ranged reads
    assert one_file["small/00/0001.txt"][1] == b"changed"
    assert restored(run, tmp_path, source) == describe_tree(source)
    assert "repository sound" in run.ok("check", "--read-data")


def test_wrong_password_on_the_command_line(ftps_server: FtpServer, source: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = cli_for(ftps_server, source, tmp_path, capsys)
    code, _out, err = run("backup", BACKUP_TARGET_PASSWORD="Not-The-Password-99")
    assert code == 1
    [line] = error_lines(err)
    assert "refused the login" in line and "Not-The-Password-99" not in err


def test_untrusted_certificate_on_the_command_line(ftps_server: FtpServer, source: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ftps_server.need_local()
    run = cli_for(ftps_server, source, tmp_path, capsys)
    del run.env["BACKUP_TLS_CA_FILE"]
    code, _out, err = run("backup")
    assert code == 1
    [line] = error_lines(err)
    assert "certificate cannot be trusted" in line and "BACKUP_TLS_CA_FILE" in line
    code, _out, err = run("backup", BACKUP_TLS_VERIFY="false")
    assert code == 0, err
    assert "NOT verified" in err


def test_plain_ftp_on_the_command_line(ftp_server: FtpServer, source: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = cli_for(ftp_server, source, tmp_path, capsys)
    code, _out, err = run("backup")
    assert code == 0, err
    assert "unencrypted" in err
    run_logs = list((tmp_path / "state" / "logs").rglob("*"))
    assert any("unencrypted" in path.read_text() for path in run_logs if path.is_file())
    assert restored(run, tmp_path, source) == describe_tree(source)


def test_a_refused_rename_on_the_command_line(vsftpd_instance: Instance, source: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with vsftpd_instance(tls=True, options=["cmds_denied=RNFR,RNTO"]) as server:
        code, _out, err = cli_for(server, source, tmp_path, capsys)("backup")
    assert code == 1
    [line] = error_lines(err)
    assert "refuses renames" in line


class Interrupting(io.RawIOBase):
    """Reads `source`, and restarts the server once `after` bytes have gone out."""

    def __init__(self, source: BinaryIO, after: int, action: Callable[[], None]) -> None:
        self.source, self.after, self.action = source, after, action

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        if self.action is not None and self.source.tell() >= self.after:
            action, self.action = self.action, None  # type: ignore[assignment]
            action()
        buffer[: len(data)] = data
        return len(data)


@pytest.mark.parametrize("back", ["at once", "after the run failed"])
def test_server_restarted_mid_backup(ftps_server: FtpServer, source: Path, tmp_path: Path, back: str,
                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ftps_server.need_local()
    run = cli_for(ftps_server, source, tmp_path, capsys)
    run.env["BACKUP_RETRIES"] = "4"  # each request of a one-shot command is tried that many times
    original = FtpBackend.put
    state = {"done": False}

    def restart() -> None:
        ftps_server.stop()
        if back == "at once":
            ftps_server.start()

    def put(self: FtpBackend, key: str, source_file: BinaryIO) -> None:
        if key.startswith("packs/") and not state["done"]:  # in the middle of the first pack's upload
            state["done"] = True
            source_file = Interrupting(source_file, 4 * 1024 * 1024, restart)  # type: ignore[assignment]
        original(self, key, source_file)

    monkeypatch.setattr(FtpBackend, "put", put)
    monkeypatch.setattr(retry, "DEFAULT_POLICY", RetryPolicy(attempts=4, initial_seconds=0.05, max_seconds=0.2))
    logins = ftps_server.logins()
    try:
        code, _out, err = run("backup")
    finally:
        ftps_server.start()
    assert state["done"]
    if back == "at once":
        assert code == 0, err  # the retries carried the run through
        assert ftps_server.logins() - logins == 2  # cut in the middle of a pack, reconnected once
        assert "attempt 2 of 4" in err
    else:
        assert code == 1
        [line] = error_lines(err)
        assert "connection" in line.lower() or "closed" in line.lower()
        run.ok("check")
        run.ok("backup")
    assert "repository sound" in run.ok("check", "--read-data")
    assert restored(run, tmp_path, source) == describe_tree(source)
