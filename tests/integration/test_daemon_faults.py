"""The daemon against faults: an error no table knows in one run, a full state folder.

It reports, keeps its changes pending and goes on: the next change is backed up.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_tree
from tests.integration.daemon_helpers import DaemonProcess, daemon_env, snapshot_paths, wait_until

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"a.txt": "alpha", "sub/b.txt": "beta"})


# The daemon with one exact fault at one exact instant: its second run's backup raises a RuntimeError,
# an error no translation table knows (a bug, or a fault nobody foresaw).
FAULT_IN_THE_SECOND_RUN = """
import sys
import watcher.daemon
real = watcher.daemon.backup_into
calls = []
def backup_into(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        raise RuntimeError("injected fault in the second run")
    return real(*args, **kwargs)
watcher.daemon.backup_into = backup_into
from watcher.cli import main
sys.exit(main(["run"]))
"""


def test_an_unexpected_error_in_a_run_is_mailed_and_the_daemon_goes_on(source, tmp_path, smtp_server):
    env = daemon_env(source, tmp_path, **smtp_server.environment(), BACKUP_RETRY_MAX_SECONDS="1")
    process = DaemonProcess(env, tmp_path / "daemon.log", [sys.executable, "-c", FAULT_IN_THE_SECOND_RUN])
    try:
        process.start().wait_for_output("saved")
        (source / "after-the-fault.txt").write_text("must be in the next snapshot")
        process.wait_for_output("injected fault in the second run", timeout=30)
        wait_until(lambda: f"{source}/after-the-fault.txt" in snapshot_paths(env), 30, "the change in a snapshot")
        assert process.process is not None and process.process.poll() is None, process.output()
        assert process.stop() == 0
    finally:
        process.kill()
    output = process.output()
    assert "Traceback" not in output  # one line on the console; the traceback is in the run's log
    assert "backup failed: unexpected RuntimeError: injected fault in the second run" in output
    failure, recovery = smtp_server.messages()  # MAIL_ON=failure: the failure, then the recovery
    assert "Error Backup" in failure["Subject"] and "Success Backup" in recovery["Subject"]
    body = failure.get_body(("plain",)).get_content()
    assert "Cause: unexpected RuntimeError: injected fault in the second run" in body
    attached = next(failure.iter_attachments()).get_content()
    assert "Traceback (most recent call last)" in attached and ", in backup_into" in attached


def mount_namespace() -> list[str]:
    """`unshare` with what this machine allows for a mount namespace of one's own (as root, or not)."""
    for command in (["unshare", "-m"], ["unshare", "-r", "-m"]):
        if shutil.which("unshare") and subprocess.run([*command, "true"], capture_output=True).returncode == 0:
            return command
    pytest.skip("needs unshare(1) and a mount namespace")


def test_a_full_state_folder_costs_the_state_never_the_daemon(source, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    env = daemon_env(source, tmp_path)
    # The daemon's own mount namespace: its state folder is a 1 MiB tmpfs, filled up before it starts.
    script = ('mount -t tmpfs -o size=1m watcher-full "$BACKUP_STATE_DIR" || exit 97; '
              'head -c 2M /dev/zero > "$BACKUP_STATE_DIR/filler" 2>/dev/null; exec "$0" -m watcher run')
    process = DaemonProcess(env, tmp_path / "daemon.log", [*mount_namespace(), "sh", "-c", script, sys.executable])
    try:
        process.start()
        wait_until(lambda: "saved" in process.output() or process.process.poll() is not None, 60, "a first run")
        assert process.process.poll() is None, process.output()
        (source / "while-full.txt").write_text("backed up although the state folder is full")
        wait_until(lambda: f"{source}/while-full.txt" in snapshot_paths(env), 30, "the change in a snapshot")
        assert process.stop() == 0
    finally:
        process.kill()
    output = process.output()
    assert "Traceback" not in output and "Logging error" not in output
    assert "No space left on device" in output or "full" in output
