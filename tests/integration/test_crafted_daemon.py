"""The daemon meets a crafted snapshot: a crafted parent fails the run, in one line, and the daemon
keeps watching; a snapshot it cannot read at all is left out with a warning and backups go on."""

from __future__ import annotations

import time

import pytest

from tests.crafting import Crafter
from tests.integration.daemon_helpers import DaemonProcess, daemon_env
from tests.unit.test_cli import make_tree
from tests.unit.test_crafted import ENTRY_CASES, SNAPSHOT_CASES, plant_snapshot, plant_tree
from watcher import cli

pytestmark = pytest.mark.timeout(120)


def planted(tmp_path, kind: str, label: str) -> tuple[dict[str, str], str]:
    """(the daemon's environment, the id of the crafted snapshot planted after a good first backup)."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    env = daemon_env(src, tmp_path, BACKUP_RETRY_MAX_SECONDS="1")
    assert cli.main(["backup"], env) == 0
    crafter = Crafter(tmp_path / "repo")
    try:
        [first] = crafter.repository.snapshot_ids()
        repo = {"crafter": crafter, "first": first, "src": src, "tmp": tmp_path}
        if kind == "entry":
            return env, plant_tree(repo, ENTRY_CASES[label], [])
        return env, plant_snapshot(repo, SNAPSHOT_CASES[label])
    finally:
        crafter.close()


def test_daemon_reports_a_crafted_parent_and_keeps_running(tmp_path, capsys):
    env, _crafted = planted(tmp_path, "entry", "mode-1e999")  # the newest snapshot, without a record
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        daemon.wait_for_output("backup failed: ")  # the start-up run (reported) ...
        daemon.wait_for_output("run failed again: ")  # ... and the next try: the daemon lives on
        assert daemon.process is not None and daemon.process.poll() is None, daemon.output()
        time.sleep(0.5)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    output = daemon.output()
    assert "Traceback" not in output, output
    failed = [line for line in output.splitlines() if "backup failed: " in line or "run failed again: " in line]
    named = [line for line in failed if ("tree " in line or "snapshot " in line) and "cannot be read" in line]
    assert failed and named == failed, failed


def test_daemon_leaves_out_a_snapshot_it_cannot_read_and_backs_up(tmp_path, capsys):
    env, crafted = planted(tmp_path, "snapshot", "time-without-zone")
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        daemon.wait_for_output("no change since snapshot")  # the start-up run compares with the good one
        (tmp_path / "src" / "new.txt").write_text("after the crafted snapshot")
        daemon.wait_for_output(" saved: ")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    output = daemon.output()
    assert "Traceback" not in output and "backup failed" not in output, output
    assert f"snapshot {crafted} cannot be read" in output, output
