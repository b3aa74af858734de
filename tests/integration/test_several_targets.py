"""Several targets in one run (SPEC "Several targets"): each its own repository, a target that is
down neither delays nor fails the others, it catches up when it is back, one mail covers them all."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.ftp import FtpServer
from tests.fixtures.sftp import SshServer
from tests.fixtures.smtp import SmtpServer
from tests.helpers import describe_tree, make_tree
from tests.integration.daemon_helpers import DaemonProcess, daemon_env, wait_until
from watcher.cli import main
from watcher.health import verdict

pytestmark = pytest.mark.timeout(300)

DOWN = "sftp://nobody@127.0.0.1:9/nowhere"
DOWN_PASSWORD = "down-Pa55word-4711"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"a.txt": "alpha", "sub/b.bin": os.urandom(200_000)})


def only(env: dict[str, str], number: int) -> dict[str, str]:
    """The same configuration with target `number` as the only one: what `check` and `restore` read."""
    suffix = "" if number == 1 else f"_{number}"
    single = {key: value for key, value in env.items() if not key.startswith("BACKUP_TARGET")}
    for setting in ("", "_PASSWORD"):
        if f"BACKUP_TARGET{suffix}{setting}" in env:
            single[f"BACKUP_TARGET{setting}"] = env[f"BACKUP_TARGET{suffix}{setting}"]
    if env.get(f"BACKUP_TARGET{suffix}_TLS_CA_FILE"):
        single["BACKUP_TLS_CA_FILE"] = env[f"BACKUP_TARGET{suffix}_TLS_CA_FILE"]
    return single


def watcher(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def paths_in(env: dict[str, str]) -> set[str]:
    done = watcher(env, "ls", "latest", "--json")
    if done.returncode != 0:
        return set()
    return {entry["path"] for entry in json.loads(done.stdout)}


def restored_matches(env: dict[str, str], source: Path, out: Path) -> None:
    done = watcher(env, "restore", "latest", "--to", str(out))
    assert done.returncode == 0, done.stderr
    assert describe_tree(out / str(source).lstrip("/")) == describe_tree(source)


def test_backup_with_one_target_down_saves_the_others_exits_1_and_mails_once(source, tmp_path, smtp_server: SmtpServer,
                                                                               capsys):
    env = {"BACKUP_SOURCES": str(source), "BACKUP_ENCRYPTION": "none",
           "BACKUP_STATE_DIR": str(tmp_path / "state"), "BACKUP_HOST": "testhost",
           "BACKUP_TARGET": f"file://{tmp_path}/one", "BACKUP_TARGET_2": DOWN,
           "BACKUP_TARGET_2_PASSWORD": DOWN_PASSWORD, "BACKUP_TARGET_3": f"file://{tmp_path}/three",
           "BACKUP_SSH_HOST_KEY": "accept-new", "BACKUP_SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
           **smtp_server.environment()}
    assert main(["backup"], env) == 1
    out, err = capsys.readouterr()
    assert f"target 2 ({DOWN})" in err and DOWN_PASSWORD not in out + err
    assert "target 1 (" in out and "target 3 (" in out and "saved" in out
    for number in (1, 3):
        assert main(["snapshots", "--json"], only(env, number)) == 0
    [message] = smtp_server.messages()
    subject = " ".join(message["Subject"].split())  # a long subject is folded
    assert "Error Backup" in subject and f"target 2 ({DOWN}) failed" in subject
    body = message.get_body(("plain",)).get_content()
    lines = [line for line in body.splitlines() if line.lstrip().startswith("target ")]
    assert [line.split(")")[0].strip() for line in lines] == [
        f"target 1 (file://{tmp_path}/one", f"target 2 ({DOWN}", f"target 3 (file://{tmp_path}/three"]
    assert "snapshot " in lines[0] and "FAILED" in lines[1] and "snapshot " in lines[2]
    assert DOWN_PASSWORD not in message.as_string()


def test_all_targets_up_is_success_and_exit_0(source, tmp_path, smtp_server: SmtpServer, capsys):
    env = {"BACKUP_SOURCES": str(source), "BACKUP_ENCRYPTION": "none", "BACKUP_STATE_DIR": str(tmp_path / "state"),
           "BACKUP_TARGET": f"file://{tmp_path}/one", "BACKUP_TARGET_2": f"file://{tmp_path}/two",
           "MAIL_ON": "always", **smtp_server.environment()}
    assert main(["backup"], env) == 0
    [message] = smtp_server.messages()
    assert "Success Backup" in message["Subject"]
    for number in (1, 2):
        restored_matches(only(env, number), source, tmp_path / f"out{number}")


def test_every_file_target_inside_a_source_is_left_out(tmp_path, capsys):
    source = make_tree(tmp_path / "src", {"a.txt": "alpha"})
    env = {"BACKUP_SOURCES": str(source), "BACKUP_ENCRYPTION": "none", "BACKUP_STATE_DIR": str(tmp_path / "state"),
           "BACKUP_TARGET": f"file://{source}/repo1", "BACKUP_TARGET_2": f"file://{source}/repo2"}
    assert main(["backup"], env) == 0
    capsys.readouterr()
    for number in (1, 2):
        assert main(["ls", "latest", "--json"], only(env, number)) == 0
        paths = " ".join(entry["path"] for entry in json.loads(capsys.readouterr().out))
        assert "repo1" not in paths and "repo2" not in paths and "a.txt" in paths


def three_targets(source: Path, tmp_path: Path, sshd: SshServer, ftps: FtpServer, **extra: str) -> dict[str, str]:
    ftps_env = ftps.env(ftps.scratch("three"))
    ca = {"BACKUP_TARGET_2_TLS_CA_FILE": ftps_env["BACKUP_TLS_CA_FILE"]} if "BACKUP_TLS_CA_FILE" in ftps_env else {}
    return {**daemon_env(source, tmp_path, f"sftp://{sshd.user}@{sshd.host}:{sshd.port}{sshd.scratch('three')}"),
            "BACKUP_TARGET_PASSWORD": sshd.password, "BACKUP_SSH_KNOWN_HOSTS": str(sshd.known_hosts),
            "BACKUP_TARGET_2": ftps_env["BACKUP_TARGET"],
            "BACKUP_TARGET_2_PASSWORD": ftps_env["BACKUP_TARGET_PASSWORD"], **ca,
            "BACKUP_TARGET_3": f"file://{tmp_path}/local", "BACKUP_RETRY_MAX_SECONDS": "2", **extra}


def test_sftp_down_does_not_delay_ftps_and_file_and_catches_up(sshd_server: SshServer, ftps_server: FtpServer,
                                                               source, tmp_path):
    if not sshd_server.local:
        pytest.skip("stops the local sshd")
    env = three_targets(source, tmp_path, sshd_server, ftps_server)
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        daemon.wait_for_output("target 3 (", timeout=60)
        wait_until(lambda: f"{source}/a.txt" in paths_in(only(env, 1)), 30, "the first snapshot on sftp")
        sshd_server.stop()
        try:
            (source / "a.txt").write_text("changed during the outage")
            daemon.wait_for_output(": run failed (", timeout=60)
            names = [f"during-{i}.txt" for i in range(8)]  # over several of the SFTP target's retries
            for name in names:  # the others get each change on time, whatever that target's retries and back-off
                (source / name).write_text(name)
                began = time.monotonic()
                for number in (2, 3):
                    wait_until(lambda n=number, f=name: f"{source}/{f}" in paths_in(only(env, n)), 30,
                               f"{name} on target {number}")
                assert time.monotonic() - began < 6, f"{name} took {time.monotonic() - began:.1f} s"
                time.sleep(1)
        finally:
            sshd_server.start()
        wait_until(lambda: {f"{source}/{name}" for name in names} <= paths_in(only(env, 1)), 90,
                   "every change made during the outage on sftp")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sshd_server.start()
    output = daemon.output()
    assert "Traceback" not in output and sshd_server.password not in output
    assert re.search(r"target 1 \(sftp:[^\n]*\): run failed \(", output)
    for number in (1, 2, 3):
        restored_matches(only(env, number), source, tmp_path / f"out{number}")


# The daemon with a pause at one exact instant: the first pack put into the second target's repository
# (a file:// one) once big.bin exists stops the process there, so that the test can kill -9 it mid-upload.
PAUSE_IN_THE_SECOND_TARGET = """
import os, sys, time
import watcher.backends.local as local
real = local.LocalBackend.put
def put(self, key, source):
    big = os.path.join(os.environ["BACKUP_SOURCES"], "big.bin")
    if str(self.root).endswith("/two") and key.startswith("packs/") and os.path.exists(big):
        if os.environ.get("PAUSE_AT"):
            print("PAUSED in the second target's upload", flush=True)
            time.sleep(600)
    return real(self, key, source)
local.LocalBackend.put = put
from watcher.cli import main
from watcher.health import verdict
sys.exit(main(["run"]))
"""


def test_kill_9_in_the_second_targets_upload_then_restart_every_target_sound(source, tmp_path):
    env = {**daemon_env(source, tmp_path, f"file://{tmp_path}/one"), "BACKUP_TARGET_2": f"file://{tmp_path}/two",
           "PAUSE_AT": "1"}
    script = [sys.executable, "-c", PAUSE_IN_THE_SECOND_TARGET]
    daemon = DaemonProcess(env, tmp_path / "daemon.log", script).start()
    try:
        daemon.wait_for_output("target 2 (", timeout=60)
        (source / "big.bin").write_bytes(os.urandom(3_000_000))
        (source / "a.txt").write_text("changed before the kill")
        daemon.wait_for_output("PAUSED in the second target's upload", timeout=60)
        daemon.process.kill()
        daemon.process.wait()
    finally:
        daemon.kill()
    restarted = DaemonProcess({**env, "PAUSE_AT": ""}, tmp_path / "daemon2.log", script).start()
    try:
        for number in (1, 2):
            wait_until(lambda n=number: f"{source}/big.bin" in paths_in(only(env, n)), 60, f"the change on {number}")
        assert restarted.stop() == 0
    finally:
        restarted.kill()
    for number in (1, 2):
        done = watcher(only(env, number), "check", "--read-data")
        assert done.returncode == 0, done.stdout + done.stderr
        restored_matches(only(env, number), source, tmp_path / f"out{number}")


def test_the_daemons_mail_names_a_failed_target_until_it_is_back(source, tmp_path, smtp_server: SmtpServer):
    from watcher.config import load_settings
    from watcher.daemon import Daemon
    from watcher.watch import Batch

    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the second repository's folder should be")
    env = {"BACKUP_SOURCES": str(source), "BACKUP_ENCRYPTION": "none",
           "BACKUP_STATE_DIR": str(tmp_path / "state"), "BACKUP_HOST": "testhost",
           "BACKUP_TARGET": f"file://{tmp_path}/one", "BACKUP_TARGET_2": f"file://{blocker}/two",
           "BACKUP_TARGET_2_PASSWORD": DOWN_PASSWORD, **smtp_server.environment()}
    daemon = Daemon(load_settings(env, need_sources=True))
    daemon.health.started(state.label for state in daemon.targets)
    one, two = daemon.targets
    label = two.label
    for passes, due in enumerate(([one, two], [one]), start=1):  # then target 1 alone: 2 waits out its back-off
        for state in due:
            state.pending.merge(Batch(full=True, reasons=["test"]))
        daemon.run_pass(due)
        assert len(smtp_server.messages()) == passes
        message = smtp_server.messages()[-1]
        subject = " ".join(message["Subject"].split())  # a long subject is folded
        assert "Error Backup" in subject and f"{label} failed" in subject
        lines = [line.strip() for line in message.get_body(("plain",)).get_content().splitlines()
                 if line.strip().startswith("target ")]
        assert lines[0].startswith(f"{one.label}: ") and lines[1].startswith(f"{label}: FAILED: ")
        assert DOWN_PASSWORD not in message.as_string()
    healthy, reason = verdict(tmp_path / "state", 100)
    assert not healthy and reason.startswith(f"{label}: the last run failed")
    blocker.unlink()  # the second target is back: the first run in which every target is sound is mailed
    two.retry_at = None
    daemon.run_pass([two])
    [*_, message] = smtp_server.messages()
    assert "Success Backup" in message["Subject"] and len(smtp_server.messages()) == 3
    body = message.get_body(("plain",)).get_content()
    assert f"{one.label}: nothing due for it in this run" in body and f"{label}: snapshot " in body
    daemon.stop.set()
