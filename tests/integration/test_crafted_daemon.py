"""The daemon meets a crafted snapshot: what a crafted parent cannot say is read again from the disk,
and a snapshot it cannot read at all is left out; either way one warning, and backups go on."""

from __future__ import annotations

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


def test_daemon_reads_again_what_a_crafted_parent_cannot_say(tmp_path, capsys):
    env, _crafted = planted(tmp_path, "entry", "mode-1e999")  # the newest snapshot, without a record
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        daemon.wait_for_output(" saved: ")  # the start-up run compares with it, and reads a.txt again
        (tmp_path / "src" / "new.txt").write_text("after the crafted snapshot")
        daemon.wait_for_output(" saved: ", count=2)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    output = daemon.output()
    assert "Traceback" not in output and "backup failed" not in output, output
    assert "('a.txt') cannot be read: mode: " in output and "read again from the disk" in output, output


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
