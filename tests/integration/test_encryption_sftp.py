"""Encrypted repositories on the real SFTP and FTP servers: the server's folder holds nothing
readable of names or contents, a new server repository needs a password, a damaged object is never
restored, and each target of several has its own keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_cli_sftp import run
from tests.unit.test_encryption import MARKERS, PASSWORD, assert_nothing_readable, flip, restored_files
from watcher import crypto, repository

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(crypto, "tuned_params", lambda seconds=crypto.KDF_SECONDS: crypto.KdfParams(1 << 10, 8, 1))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for relative, content in MARKERS.items():
        path = src / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return src


def sftp_env(server, source: Path, tmp_path: Path, folder: str) -> dict[str, str]:
    return {"BACKUP_SOURCES": str(source), "BACKUP_STATE_DIR": str(tmp_path / "state"),
            "BACKUP_TARGET": f"sftp://{server.user}@{server.host}:{server.port}{folder}",
            "BACKUP_TARGET_PASSWORD": server.password, "BACKUP_SSH_KNOWN_HOSTS": str(server.known_hosts),
            "BACKUP_REPOSITORY_PASSWORD": PASSWORD}


def test_the_sftp_servers_folder_holds_nothing_readable_and_damage_is_never_restored(sshd_server, source,
                                                                                     tmp_path, capsys):
    sshd_server.need_local()  # its folder is searched on disk
    folder = sshd_server.scratch("encrypted")
    env = sftp_env(sshd_server, source, tmp_path, folder)
    code, _out, err = run(capsys, ["backup"], env)
    assert code == 0, err
    assert json.loads((Path(folder) / "config").read_bytes())["version"] == 2
    assert_nothing_readable(Path(folder))
    assert run(capsys, ["restore", "latest", "--to", str(tmp_path / "out")], env)[0] == 0
    assert restored_files(tmp_path / "out", source) == MARKERS
    # a damaged snapshot, from another machine's point of view
    (snapshot,) = sorted((Path(folder) / "snapshots").iterdir())
    flip(snapshot)
    fresh = {**env, "BACKUP_STATE_DIR": str(tmp_path / "fresh")}
    code, out, _err = run(capsys, ["check"], fresh)
    assert code == 1 and "fails authentication" in out
    code, _out, err = run(capsys, ["restore", "latest", "--to", str(tmp_path / "out2")], fresh)
    assert code == 1 and "fails authentication" in err
    assert restored_files(tmp_path / "out2", source) == {}


def test_a_new_server_repository_without_a_password_is_refused_at_start(sshd_server, source, tmp_path, capsys):
    folder = sshd_server.scratch("refused")
    env = {key: value for key, value in sftp_env(sshd_server, source, tmp_path, folder).items()
           if key != "BACKUP_REPOSITORY_PASSWORD"}
    code, _out, err = run(capsys, ["backup"], env)
    assert code == 2 and err.splitlines()[-1].startswith("error: BACKUP_REPOSITORY_PASSWORD: required to create")
    code, _out, err = run(capsys, ["backup"], {**env, "BACKUP_ENCRYPTION": "none"})
    assert code == 0, err
    assert run(capsys, ["snapshots"], env)[0] == 0  # an existing plain repository keeps working without one


def test_each_target_has_its_own_keys_opened_by_the_same_password(sshd_server, ftp_server, source, tmp_path,
                                                                   capsys):
    """Over SFTP and over plain FTP (the data crosses the network in clear there: only ciphertext may)."""
    second = ftp_server.scratch("second")
    env = {**sftp_env(sshd_server, source, tmp_path, sshd_server.scratch("first")),
           "BACKUP_TARGET_2": ftp_server.env(second)["BACKUP_TARGET"],
           "BACKUP_TARGET_2_PASSWORD": ftp_server.password}
    code, _out, err = run(capsys, ["backup"], env)
    assert code == 0, err
    if ftp_server.local:  # the FTP server's folder, searched on disk
        assert json.loads((Path(second) / "config").read_bytes())["version"] == 2
        assert_nothing_readable(Path(second))
    keys = [json.loads(run(capsys, ["key", "list", "--json", "--target", str(n)], env)[1]) for n in (1, 2)]
    assert keys[0][0]["id"] != keys[1][0]["id"]
    repository._UNLOCKED.clear()
    wrong = {**env, "BACKUP_REPOSITORY_PASSWORD": "not it at all"}
    for number in ("1", "2"):
        code, _out, err = run(capsys, ["snapshots", "--target", number], wrong)
        assert code == 1 and "wrong password" in err
        assert run(capsys, ["restore", "latest", "--target", number, "--to", str(tmp_path / f"out{number}")],
                   env)[0] == 0
        assert restored_files(tmp_path / f"out{number}", source) == MARKERS


def test_passwords_never_reach_a_report_mail(smtp_server, source, tmp_path, capsys):
    env = {"BACKUP_SOURCES": str(source), "BACKUP_TARGET": f"file://{tmp_path}/repo", "MAIL_ON": "always",
           "BACKUP_STATE_DIR": str(tmp_path / "state"), "BACKUP_REPOSITORY_PASSWORD": PASSWORD,
           "BACKUP_NEW_REPOSITORY_PASSWORD": "the next pass phrase", **smtp_server.environment()}
    assert run(capsys, ["backup"], env)[0] == 0
    repository._UNLOCKED.clear()
    (source / "more.txt").write_text("more")
    wrong = {**env, "BACKUP_REPOSITORY_PASSWORD": "a wrong pass phrase"}
    code, _out, err = run(capsys, ["backup"], wrong)
    assert code == 1 and "wrong password" in err
    messages = smtp_server.messages()
    assert len(messages) == 2 and "wrong password" in messages[1].as_string()
    for message in messages:
        text = message.as_string() + "".join(part.get_content() for part in message.iter_attachments())
        for secret in (PASSWORD, "the next pass phrase", "a wrong pass phrase"):
            assert secret not in text


def test_the_daemon_backs_up_into_an_encrypted_sftp_repository(sshd_server, source, tmp_path):
    from tests.integration.daemon_helpers import DaemonProcess, daemon_env, snapshot_paths, wait_until

    folder = sshd_server.scratch("daemon")
    env = {**daemon_env(source, tmp_path), **sftp_env(sshd_server, source, tmp_path, folder),
           "BACKUP_ENCRYPTION": "auto", "BACKUP_HEALTH_MAX_AGE_SECONDS": "2"}  # a run every second, idle
    process = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        process.wait_for_output("saved")
        (source / "later.txt").write_text("MARKERCONTENTLATER written while the daemon runs")
        wait_until(lambda: f"{source}/later.txt" in snapshot_paths(env), 30, "the new file in a snapshot")
        process.wait_for_output("no change since snapshot", count=2)  # more runs, on the repository kept open
        assert process.stop() == 0
    finally:
        process.kill()
    output = process.output()
    assert "created a new encrypted repository" in output and PASSWORD not in output
    if sshd_server.local:
        assert_nothing_readable(Path(folder))
        assert b"MARKERCONTENTLATER" not in b"".join(path.read_bytes() for path in Path(folder).rglob("*")
                                                     if path.is_file())
