"""The daemon meets a crafted parent snapshot: it reports the run as failed, in one line, and keeps watching."""

from __future__ import annotations

import time

import pytest

from tests.crafting import Crafter
from tests.integration.daemon_helpers import DaemonProcess, daemon_env
from tests.unit.test_cli import make_tree
from tests.unit.test_crafted import ENTRY_CASES, SNAPSHOT_CASES, plant_snapshot, plant_tree
from watcher import cli

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("kind", "label"), [("entry", "mode-1e999"), ("snapshot", "time-without-zone")])
def test_daemon_reports_a_crafted_parent_and_keeps_running(tmp_path, capsys, kind, label):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    env = daemon_env(src, tmp_path, BACKUP_RETRY_MAX_SECONDS="1")
    assert cli.main(["backup"], env) == 0
    crafter = Crafter(tmp_path / "repo")
    try:
        [first] = crafter.repository.snapshot_ids()
        repo = {"crafter": crafter, "first": first, "src": src}
        if kind == "entry":
            plant_tree(repo, ENTRY_CASES[label], [])
        else:
            plant_snapshot(repo, SNAPSHOT_CASES[label])
    finally:
        crafter.close()
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
