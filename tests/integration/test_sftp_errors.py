"""SftpBackend against a real OpenSSH sshd: logins, host keys, lost servers, refusals.

Each failure must arrive as the error class that decides retrying (see watcher/errors.py),
with a message that helps and never holds the password.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.fixtures.sftp import SFTP_TEST_PASSWORD, SFTP_TEST_USER, USER_SCRIPT, SshServer
from watcher.backends.known_hosts import read_known_hosts
from watcher.backends.sftp import SftpBackend
from watcher.errors import (
    AuthError,
    BackendConfigError,
    ConnectionLostError,
    NotFoundError,
    PermissionDeniedError,
    StorageFullError,
    TrustError,
    is_transient,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@contextlib.contextmanager
def opened(backend: SftpBackend) -> Iterator[SftpBackend]:
    try:
        backend.open()
        yield backend
    finally:
        backend.close()


def host_name(server: SshServer) -> str:
    return f"[{server.host}]:{server.port}" if server.port != 22 else server.host


def server_key(server: SshServer) -> paramiko.PKey:
    known, _ = read_known_hosts(server.known_hosts, host_name(server))
    return known[0]


def impostor_of(key: paramiko.PKey) -> str:
    """`type base64` of a new key of the same type as `key`: what a man in the middle shows."""
    if key.get_name() == "ssh-ed25519":
        public = ed25519.Ed25519PrivateKey.generate().public_key()
        return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    other = paramiko.RSAKey.generate(2048) if key.get_name() == "ssh-rsa" else paramiko.ECDSAKey.generate()
    return f"{other.get_name()} {other.get_base64()}"


def test_user_script_and_fixture_agree() -> None:
    script = USER_SCRIPT.read_text()
    assert re.search(rf"^SFTP_USER={re.escape(SFTP_TEST_USER)}$", script, re.MULTILINE)
    assert re.search(rf"^SFTP_PASSWORD={re.escape(SFTP_TEST_PASSWORD)}$", script, re.MULTILINE)


def test_password_login(sshd_server: SshServer) -> None:
    backend = sshd_server.backend()
    with opened(backend):
        backend.put_bytes("x", b"hello")
        assert backend.get_bytes("x") == b"hello"
    assert backend.describe() == f"sftp://{sshd_server.user}@{sshd_server.host}:{sshd_server.port}{backend.root}"


# -- logins ------------------------------------------------------------------------------


def test_wrong_password(sshd_server: SshServer) -> None:
    secret = "Wrong-Secret-4711"
    backend = sshd_server.backend(password=secret)
    with pytest.raises(AuthError) as caught:
        backend.open()
    assert not is_transient(caught.value)
    assert "refused the login" in str(caught.value)
    for text in (str(caught.value), backend.describe(), repr(backend)):
        assert secret not in text


def test_wrong_user(sshd_server: SshServer) -> None:
    with pytest.raises(AuthError):
        sshd_server.backend(user="nobody-here").open()


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_key_file_login(sshd_server: SshServer, kind: str) -> None:
    if kind not in sshd_server.client_keys:
        pytest.skip("no client key of this type for an external server")
    with opened(sshd_server.backend(password=None, key_file=sshd_server.client_keys[kind])) as backend:
        backend.put_bytes("by-key", b"k")
        assert backend.stat("by-key").size == 1


def test_encrypted_key_uses_the_password_as_passphrase(sshd_server: SshServer) -> None:
    sshd_server.need_local()
    key = sshd_server.client_keys["encrypted"]
    with opened(sshd_server.backend(key_file=key)) as backend:
        assert list(backend.list()) == []
    with pytest.raises(AuthError, match="encrypted"):
        sshd_server.backend(password=None, key_file=key).open()
    with pytest.raises(AuthError, match="passphrase"):
        sshd_server.backend(password="not-the-passphrase", key_file=key).open()


def test_refused_key_falls_back_to_the_password(sshd_server: SshServer) -> None:
    sshd_server.need_local()
    key = sshd_server.client_keys["unauthorized"]
    with pytest.raises(AuthError):
        sshd_server.backend(password=None, key_file=key).open()
    with opened(sshd_server.backend(key_file=key)) as backend:
        backend.put_bytes("fallback", b"ok")


def test_unreadable_key_file(sshd_server: SshServer, tmp_path: Path) -> None:
    with pytest.raises(BackendConfigError, match="cannot read"):
        sshd_server.backend(key_file=tmp_path / "absent").open()
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    with pytest.raises(BackendConfigError, match="not a private key"):
        sshd_server.backend(key_file=garbage).open()


# -- host keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("known_hosts", ["missing", "empty", "other-hosts"])
def test_unknown_host_key_is_refused_under_strict(sshd_server: SshServer, tmp_path: Path, known_hosts: str) -> None:
    path = tmp_path / "known_hosts"
    key = server_key(sshd_server)
    if known_hosts == "empty":
        path.write_text("")
    elif known_hosts == "other-hosts":  # the same key, but for the default port and another port
        entry = f"{key.get_name()} {key.get_base64()}"
        path.write_text(f"{sshd_server.host} {entry}\n[{sshd_server.host}]:1 {entry}\n")
    before = path.read_text() if path.exists() else None
    with pytest.raises(TrustError) as caught:
        sshd_server.backend(known_hosts=path).open()
    message = str(caught.value)
    assert key.fingerprint in message
    assert str(path) in message and "BACKUP_SSH_HOST_KEY=accept-new" in message
    assert (path.read_text() if path.exists() else None) == before  # strict never writes


def test_accept_new_records_the_key_then_refuses_a_change(sshd_server: SshServer, tmp_path: Path) -> None:
    path = tmp_path / "created" / "known_hosts"
    with opened(sshd_server.backend(known_hosts=path, host_key_policy="accept-new")):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = server_key(sshd_server)
    assert path.read_text() == f"{host_name(sshd_server)} {key.get_name()} {key.get_base64()}\n"
    with opened(sshd_server.backend(known_hosts=path, host_key_policy="strict")):
        pass  # the recorded key is trusted from now on

    impostor = f"{host_name(sshd_server)} {impostor_of(key)}\n"
    path.write_text(impostor)
    for policy in ("accept-new", "strict"):
        with pytest.raises(TrustError, match="CHANGED") as caught:
            sshd_server.backend(known_hosts=path, host_key_policy=policy).open()
        assert key.fingerprint in str(caught.value)
    assert path.read_text() == impostor  # never rewritten


def test_a_known_key_of_another_type_is_a_change(sshd_server: SshServer, tmp_path: Path) -> None:
    """A server showing a key type we never saw for it is refused, not accepted as new."""
    sshd_server.need_local()
    other = Path(f"{sshd_server.client_keys['ecdsa']}.pub").read_text().split()
    path = tmp_path / "known_hosts"
    path.write_text(f"{host_name(sshd_server)} {other[0]} {other[1]}\n")
    with pytest.raises(TrustError, match="CHANGED"):
        sshd_server.backend(known_hosts=path, host_key_policy="accept-new").open()


def test_hashed_known_hosts_entry(sshd_server: SshServer, tmp_path: Path) -> None:
    key = server_key(sshd_server)
    hashed = paramiko.HostKeys.hash_host(host_name(sshd_server))
    path = tmp_path / "known_hosts"
    path.write_text(f"{hashed} {key.get_name()} {key.get_base64()}\n")
    with opened(sshd_server.backend(known_hosts=path)):
        pass


def test_known_hosts_written_by_openssh_is_understood(sshd_server: SshServer, tmp_path: Path) -> None:
    """What `ssh-keyscan -H -p PORT host >> known_hosts` writes, as the error message suggests."""
    sshd_server.need_local()
    scan = subprocess.run(
        ["ssh-keyscan", "-H", "-t", "ed25519", "-p", str(sshd_server.port), sshd_server.host],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    path = tmp_path / "known_hosts"
    path.write_text(scan.stdout)
    with opened(sshd_server.backend(known_hosts=path)):
        pass


# -- lost and refused connections --------------------------------------------------------


def test_unknown_host_name(sshd_server: SshServer) -> None:
    with pytest.raises(BackendConfigError, match="resolve"):
        sshd_server.backend(host="no-such-host.invalid").open()


def test_connection_refused_while_the_server_is_down(sshd_server: SshServer) -> None:
    sshd_server.stop()
    try:
        with pytest.raises(ConnectionLostError) as caught:
            sshd_server.backend().open()
        assert is_transient(caught.value)
    finally:
        sshd_server.start()


def test_reconnect_after_the_server_restarts(sshd_server: SshServer) -> None:
    data = os.urandom(3 * 1024 * 1024)
    with opened(sshd_server.backend()) as backend:
        backend.put_bytes("before", data)
        sshd_server.stop()
        try:
            with pytest.raises(ConnectionLostError):
                backend.get_bytes("before")
            with pytest.raises(ConnectionLostError):
                backend.put_bytes("during", data)
            with pytest.raises(ConnectionLostError):
                backend.reconnect()
        finally:
            sshd_server.start()
        backend.reconnect()
        assert backend.get_bytes("before") == data
        backend.put_bytes("after", data)
        assert [info.key for info in backend.list()] == ["after", "before"]


def test_operations_open_the_connection_on_first_use(sshd_server: SshServer) -> None:
    backend = sshd_server.backend()
    try:
        backend.put_bytes("lazy", b"x")
        assert backend.exists("lazy")
    finally:
        backend.close()
    backend.close()  # twice is fine


# -- the server's file system ------------------------------------------------------------


def test_root_is_created_with_its_parents(sshd_server: SshServer) -> None:
    root = f"{sshd_server.scratch('deep')}/a/b/c"
    with opened(sshd_server.backend(root=root)) as backend:
        backend.put_bytes("k", b"v")
    with opened(sshd_server.backend(root=root)) as again:
        assert again.get_bytes("k") == b"v"


def test_root_that_is_a_file(sshd_server: SshServer) -> None:
    folder = sshd_server.scratch("file-root")
    with opened(sshd_server.backend(root=folder)) as backend:
        backend.put_bytes("plain", b"x")
    with pytest.raises(BackendConfigError, match="not a folder"):
        sshd_server.backend(root=f"{folder}/plain").open()


def test_root_where_the_user_may_not_write(sshd_server: SshServer) -> None:
    with pytest.raises(PermissionDeniedError):
        sshd_server.backend(root="/root/watcher-cannot-be-here").open()


@pytest.fixture
def local_backend(sshd_server: SshServer) -> Iterator[SftpBackend]:
    """A backend whose root the test can also reach as root on the local disk."""
    sshd_server.need_local()
    with opened(sshd_server.backend()) as backend:
        yield backend


def test_permission_denied_on_a_read_only_folder(local_backend: SftpBackend) -> None:
    backend = local_backend
    backend.put_bytes("locked/existing", b"keep me")
    locked = Path(backend.root) / "locked"
    os.chown(locked, 0, 0)
    locked.chmod(0o555)
    with pytest.raises(PermissionDeniedError) as caught:
        backend.put_bytes("locked/new", b"x")
    assert not is_transient(caught.value)
    with pytest.raises(PermissionDeniedError):
        backend.put_bytes("locked/sub/new", b"x")
    with pytest.raises(PermissionDeniedError):
        backend.delete("locked/existing")
    assert backend.get_bytes("locked/existing") == b"keep me"
    assert [info.key for info in backend.list()] == ["locked/existing"]


def test_permission_denied_on_an_unreadable_object(local_backend: SftpBackend) -> None:
    backend = local_backend
    backend.put_bytes("secret", b"hidden")
    path = Path(backend.root) / "secret"
    os.chown(path, 0, 0)
    path.chmod(0o600)
    with pytest.raises(PermissionDeniedError):
        backend.get_bytes("secret")
    with pytest.raises(PermissionDeniedError):
        backend.read_range("secret", 0, 1)
    assert backend.stat("secret").size == 6  # stat needs no read permission


def test_a_file_in_the_way_of_a_folder(sftp_backend: SftpBackend) -> None:
    sftp_backend.put_bytes("data", b"a file")
    with pytest.raises(BackendConfigError, match="in the way"):
        sftp_backend.put_bytes("data/object", b"x")
    assert sftp_backend.get_bytes("data") == b"a file"


def test_a_folder_is_not_an_object(local_backend: SftpBackend) -> None:
    local_backend.put_bytes("folder/inside", b"x")
    with pytest.raises(NotFoundError):
        local_backend.stat("folder")


def test_full_disk_is_storage_full(local_backend: SftpBackend) -> None:
    """On a full disk OpenSSH answers only "Failure": statvfs@openssh.com tells it apart."""
    backend = local_backend
    backend.put_bytes("small/first", b"fits")
    mount_point = Path(backend.root) / "small"
    owner = mount_point.stat()
    mount = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size=2m,mode=0755,uid={owner.st_uid},gid={owner.st_gid}",
            "tmpfs",
            str(mount_point),
        ],
        capture_output=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.decode(errors='replace').strip()}")
    try:
        backend.put_bytes("small/fits", b"x" * 100_000)
        with pytest.raises(StorageFullError) as caught:
            backend.put("small/too-big", io.BytesIO(os.urandom(4 * 1024 * 1024)))
        assert not is_transient(caught.value)
        assert not backend.exists("small/too-big")
        assert os.listdir(mount_point) == ["fits"]  # the temporary file was removed
        backend.put_bytes("small/after", b"y" * 1000)  # the session survives
    finally:
        backend.close()  # nothing open on the mount
        subprocess.run(["umount", str(mount_point)], check=True, capture_output=True)
