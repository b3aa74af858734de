"""Every command against a real OpenSSH sshd, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.sftp import SshServer
from tests.fixtures.smtp import SmtpServer
from tests.helpers import describe_tree, make_tree
from tests.integration.daemon_helpers import DaemonProcess, daemon_env, snapshot_paths, wait_until
from watcher.cli import main

pytestmark = pytest.mark.timeout(300)


def sftp_env(server: SshServer, source: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "BACKUP_SOURCES": str(source),
        "BACKUP_ENCRYPTION": "none",  # these tests are about format 1 over SFTP; test_encryption_sftp.py encrypts
        "BACKUP_TARGET": f"sftp://{server.user}@{server.host}:{server.port}{server.scratch('cli')}",
        "BACKUP_TARGET_PASSWORD": server.password,
        "BACKUP_SSH_KNOWN_HOSTS": str(server.known_hosts),
        "BACKUP_STATE_DIR": str(tmp_path / "state"),
        **extra,
    }


@pytest.fixture
def source(tmp_path: Path) -> Path:
    tree = make_tree(tmp_path / "src", {
        "docs/a.txt": "alpha", "docs/b.bin": os.urandom(2_500_000), "empty/": "/", "link": "->docs/a.txt",
        **{f"many/f{i}.txt": f"small file {i}" for i in range(300)},
    })
    os.utime(tree / "docs/a.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    return tree


def run(capsys, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    code = main(argv, env)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def exercise_commands(capsys, env: dict[str, str], source: Path, tmp_path: Path) -> list[dict[str, object]]:
    """backup, a change, backup again, then snapshots, ls, diff, restore (all and one path) and
    check, each as a user runs it; returns the two snapshots as `snapshots --json` lists them.
    Shared by the every-command tests of each server kind."""
    code, out, err = run(capsys, ["backup"], env)
    assert code == 0, err
    first = out.split()[1]
    (source / "docs/a.txt").write_text("alpha, changed")
    (source / "docs/new.txt").write_text("new")
    (source / "many/f7.txt").unlink()
    assert run(capsys, ["backup"], env)[0] == 0
    code, out, _ = run(capsys, ["snapshots", "--json"], env)
    listed = json.loads(out)
    assert code == 0 and listed[0]["id"] == first and len(listed) == 2
    code, out, _ = run(capsys, ["ls", "latest", str(source / "docs")], env)
    assert code == 0 and f"{source}/docs/new.txt" in out
    code, out, _ = run(capsys, ["diff", first, "latest"], env)
    assert code == 0
    assert f"+ {source}/docs/new.txt" in out and f"- {source}/many/f7.txt" in out and f"M {source}/docs/a.txt" in out
    code, out, err = run(capsys, ["restore", "latest", "--to", str(tmp_path / "out")], env)
    assert code == 0, out + err
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)
    code, out, _ = run(capsys, ["restore", first, "--to", str(tmp_path / "one"), f"{source}/many/f7.txt"], env)
    assert code == 0 and (tmp_path / "one" / str(source).lstrip("/") / "many/f7.txt").read_text() == "small file 7"
    code, out, _ = run(capsys, ["check", "--read-data"], env)
    assert code == 0 and "repository sound" in out
    return listed


def test_every_command_over_sftp(sshd_server, source, tmp_path, capsys):
    env = sftp_env(sshd_server, source, tmp_path)
    exercise_commands(capsys, env, source, tmp_path)
    code, out, _ = run(capsys, ["doctor"], env)
    assert code == 0 and "ok   target: sftp://" in out


def test_a_fresh_machine_with_only_the_target_lists_and_restores(sshd_server, source, tmp_path, capsys):
    env = sftp_env(sshd_server, source, tmp_path)
    assert run(capsys, ["backup"], env)[0] == 0
    fresh = {key: value for key, value in env.items() if key != "BACKUP_SOURCES"}
    fresh["BACKUP_STATE_DIR"] = str(tmp_path / "another-machine-state")
    code, out, _ = run(capsys, ["snapshots"], fresh)
    assert code == 0 and "1 snapshots" in out
    assert run(capsys, ["restore", "latest", "--to", str(tmp_path / "out")], fresh)[0] == 0
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)


def test_key_authentication(sshd_server, source, tmp_path, capsys):
    env = sftp_env(sshd_server, source, tmp_path, BACKUP_SSH_KEY=str(sshd_server.client_keys["ed25519"]))
    del env["BACKUP_TARGET_PASSWORD"]
    code, _, err = run(capsys, ["backup"], env)
    assert code == 0, err


def test_wrong_password_is_one_clear_line(sshd_server, source, tmp_path, capsys):
    env = sftp_env(sshd_server, source, tmp_path, BACKUP_TARGET_PASSWORD="Wrong-Pass-123")
    code, out, err = run(capsys, ["backup"], env)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err
    assert "Wrong-Pass-123" not in out + err


def test_unknown_host_key_is_refused_and_accept_new_records_it(sshd_server, source, tmp_path, capsys):
    known = tmp_path / "ssh" / "known_hosts"
    env = sftp_env(sshd_server, source, tmp_path, BACKUP_SSH_KNOWN_HOSTS=str(known))
    code, _, err = run(capsys, ["backup"], env)
    assert code == 1 and "error:" in err and "accept-new" in err
    assert run(capsys, ["backup"], {**env, "BACKUP_SSH_HOST_KEY": "accept-new"})[0] == 0
    assert known.read_text().strip()
    assert run(capsys, ["snapshots"], env)[0] == 0  # strict now passes: the key was recorded


def test_failure_mail_for_a_wrong_target_password(sshd_server, source, tmp_path, smtp_server: SmtpServer, capsys):
    env = {**sftp_env(sshd_server, source, tmp_path, BACKUP_TARGET_PASSWORD="Wrong-Pass-123"),
           **smtp_server.environment()}
    assert run(capsys, ["backup"], env)[0] == 1
    [message] = smtp_server.messages()
    assert "Error Backup" in message["Subject"]
    body = message.get_body(("plain",)).get_content()
    assert "Cause:" in body and "Wrong-Pass-123" not in message.as_string()
    assert f"sftp://{sshd_server.user}@" in body


def _count_files(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(1 for path in folder.rglob("*") if path.is_file() and not path.name.startswith("."))


@pytest.mark.parametrize("moment", ["after the first pack", "after the first index"])
def test_kill_9_during_an_sftp_backup(sshd_server, tmp_path, moment, capsys):
    source = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(12)})
    env = sftp_env(sshd_server, source, tmp_path)
    remote = Path(env["BACKUP_TARGET"].split(str(sshd_server.port), 1)[1])
    from watcher.repository import Repository

    backend = sshd_server.backend(root=str(remote))
    try:
        Repository(backend, None).open(create=True, pack_size=1024 * 1024)
    finally:
        backend.close()
    folder = "packs" if moment == "after the first pack" else "index"
    process = subprocess.Popen([sys.executable, "-m", "watcher", "backup"], env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _count_files(remote / folder) >= 1 or process.poll() is not None, 60, moment)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert_recovers(capsys, env, source, tmp_path)


def assert_recovers(capsys, env: dict[str, str], source: Path, tmp_path: Path) -> None:
    """After a backup killed with SIGKILL: `check` passes, at most the whole snapshot is there, the
    next backup completes and restores byte for byte."""
    code, out, _ = run(capsys, ["check", "--read-data"], env)
    assert code == 0, out
    assert len(json.loads(run(capsys, ["snapshots", "--json"], env)[1])) <= 1
    assert run(capsys, ["backup"], env)[0] == 0
    assert run(capsys, ["check", "--read-data"], env)[0] == 0
    assert run(capsys, ["restore", "latest", "--to", str(tmp_path / "out")], env)[0] == 0
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)


def test_daemon_survives_the_server_going_away(sshd_server, source, tmp_path):
    env = {**os.environ, **daemon_env(source, tmp_path, sftp_env(sshd_server, source, tmp_path)["BACKUP_TARGET"]),
           "BACKUP_TARGET_PASSWORD": sshd_server.password, "BACKUP_SSH_KNOWN_HOSTS": str(sshd_server.known_hosts),
           "BACKUP_RETRY_MAX_SECONDS": "2"}
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        daemon.wait_for_output("saved")
        outage(daemon, sshd_server, env, source, tmp_path)
    finally:
        daemon.kill()


def outage(daemon: DaemonProcess, server: Any, env: dict[str, str], source: Path, tmp_path: Path) -> None:
    """Take `server` away under a running daemon, change files, bring it back: every change made during
    the outage reaches a snapshot, the daemon stops cleanly, and the latest snapshot restores."""
    server.stop()
    try:
        (source / "during-outage-1.txt").write_text("one")
        (source / "docs/a.txt").write_text("changed during the outage")
        daemon.wait_for_output("run failed", timeout=60)
        (source / "during-outage-2.txt").write_text("two")
        time.sleep(1)
    finally:
        server.start()
    expected = {f"{source}/during-outage-1.txt", f"{source}/during-outage-2.txt"}
    wait_until(lambda: expected <= snapshot_paths(env), 90, "every change made during the outage")
    assert daemon.stop() == 0
    restore = subprocess.run([sys.executable, "-m", "watcher", "restore", "latest", "--to", str(tmp_path / "out")],
                             env=env, capture_output=True, text=True, timeout=120)
    assert restore.returncode == 0
    assert (tmp_path / "out" / str(source).lstrip("/") / "docs/a.txt").read_text() == "changed during the outage"


def test_sigterm_during_a_back_off_stops_within_seconds(sshd_server, source, tmp_path):
    env = {**os.environ, **daemon_env(source, tmp_path, f"sftp://{sshd_server.user}@127.0.0.1:9/nowhere"),
           "BACKUP_TARGET_PASSWORD": sshd_server.password, "BACKUP_SSH_KNOWN_HOSTS": str(sshd_server.known_hosts),
           "BACKUP_RETRY_MAX_SECONDS": "300"}
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        daemon.wait_for_output("attempt 2 of", timeout=60)
        began = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.stop(timeout=15) == 0
        assert time.monotonic() - began < 10
    finally:
        daemon.kill()
    assert json.loads((tmp_path / "state" / "pending.json").read_text())["full"] is True
