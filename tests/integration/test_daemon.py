"""`watcher run` as a real process, with real watchdog events in temporary folders."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import make_tree
from tests.integration.daemon_helpers import DaemonProcess, daemon_env, snapshot_paths, wait_until, watcher_json

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"a.txt": "alpha", "sub/b.txt": "beta"})


@pytest.fixture
def daemon(tmp_path: Path, source: Path):
    started: list[DaemonProcess] = []

    def start(**extra: str) -> DaemonProcess:
        process = DaemonProcess(daemon_env(source, tmp_path, **extra), tmp_path / "daemon.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def test_a_new_file_becomes_a_snapshot_within_seconds(daemon, source):
    process = daemon()
    process.wait_for_output("saved")
    (source / "new.txt").write_text("fresh")
    began = time.monotonic()
    wait_until(lambda: f"{source}/new.txt" in snapshot_paths(process.env), 15, "the new file in a snapshot")
    assert time.monotonic() - began < 10
    assert process.stop() == 0
    assert "watcher daemon stopped" in process.output()


def test_deleted_and_renamed_files(daemon, source):
    process = daemon()
    process.wait_for_output("saved")
    (source / "a.txt").rename(source / "renamed.txt")
    (source / "sub/b.txt").unlink()
    wait_until(lambda: f"{source}/renamed.txt" in snapshot_paths(process.env), 15, "the rename in a snapshot")
    paths = snapshot_paths(process.env)
    assert f"{source}/a.txt" not in paths and f"{source}/sub/b.txt" not in paths
    assert process.stop() == 0


def test_a_burst_of_10000_files_makes_few_snapshots_and_the_last_holds_all(daemon, source, tmp_path):
    process = daemon(BACKUP_DEBOUNCE_SECONDS="2", BACKUP_MAX_DELAY_SECONDS="30")
    process.wait_for_output("saved")
    script = ("import os, sys\n"
              "root = sys.argv[1]\n"
              "for i in range(10000):\n"
              "    folder = os.path.join(root, 'burst', f'd{i // 500}')\n"
              "    os.makedirs(folder, exist_ok=True)\n"
              "    with open(os.path.join(folder, f'f{i}.txt'), 'w') as handle:\n"
              "        handle.write(str(i))\n")
    subprocess.run([sys.executable, "-c", script, str(source)], check=True, timeout=120)
    expected = {f"{source}/burst/d{i // 500}/f{i}.txt" for i in range(10000)}

    def all_in_latest() -> bool:
        return expected <= snapshot_paths(process.env)

    wait_until(all_in_latest, 120, "all 10,000 files in the latest snapshot")
    time.sleep(3)  # let any straggling run finish before counting
    assert process.stop() == 0
    snapshots = watcher_json(process.env, "snapshots")
    assert len(snapshots) - 1 <= 3  # the start-up snapshot, then at most 3 for the burst


def test_kill_9_mid_run_then_restart_loses_nothing(daemon, source, tmp_path):
    process = daemon()
    process.wait_for_output("saved")
    big = source / "big"
    big.mkdir()
    for index in range(40):
        (big / f"{index}.bin").write_bytes(bytes([index]) * 1_000_000)
    process.wait_for_output("run started", count=2)
    process.kill()  # SIGKILL in the middle of (or right after) that run
    (source / "while-down.txt").write_text("made while the daemon was dead")
    again = daemon()
    wait_until(lambda: {f"{source}/while-down.txt", f"{source}/big/39.bin"} <= snapshot_paths(again.env), 60,
               "every change in a snapshot after the restart")
    assert again.stop() == 0
    check = subprocess.run([sys.executable, "-m", "watcher", "check", "--read-data"], env=again.env,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout


def test_a_watched_folder_removed_and_recreated_is_watched_again(daemon, source):
    process = daemon()
    process.wait_for_output("saved")
    shutil.rmtree(source)
    source.mkdir()
    (source / "after.txt").write_text("back")
    wait_until(lambda: f"{source}/after.txt" in snapshot_paths(process.env), 30, "the re-created folder's file")
    (source / "later.txt").write_text("events work again")
    wait_until(lambda: f"{source}/later.txt" in snapshot_paths(process.env), 30, "a file made after re-watching")
    assert process.stop() == 0


def test_a_watched_folder_moved_away_is_reported_and_watched_again_when_back(daemon, source, tmp_path):
    """`mv` of a watched folder sends no removal: its watch follows it to the new place. The daemon
    notices that the source is gone within seconds (a warning and a run that says it cannot read it,
    never silence), and watches it again once it is back."""
    process = daemon()
    process.wait_for_output("saved")
    moved = tmp_path / "moved-away"
    source.rename(moved)
    process.wait_for_output("the watched folder is gone", timeout=20)
    process.wait_for_output(f"cannot read source {source}", timeout=30)
    moved.rename(source)
    process.wait_for_output("the watched folder is back", timeout=20)
    (source / "after-return.txt").write_text("watched again")
    wait_until(lambda: f"{source}/after-return.txt" in snapshot_paths(process.env), 30, "a file made after its return")
    assert process.stop() == 0


def test_sigterm_stops_promptly_with_exit_0(daemon):
    process = daemon()
    process.wait_for_output("saved")
    began = time.monotonic()
    process.signal(signal.SIGINT)
    assert process.stop() == 0
    assert time.monotonic() - began < 10


def test_the_daemon_mails_its_runs(daemon, source, smtp_server):
    process = daemon(**smtp_server.environment(), MAIL_ON="always")
    process.wait_for_output("saved")
    (source / "mailed.txt").write_text("a change")
    process.wait_for_output("report mail sent", count=2, timeout=30)
    assert process.stop() == 0
    subjects = [message["Subject"] for message in smtp_server.messages()]
    assert len(subjects) >= 2 and all("Success Backup" in subject for subject in subjects)
    attachment = next(smtp_server.messages()[-1].iter_attachments()).get_content()
    assert "run started (" in attachment and "saved" in attachment


def test_excluded_paths_never_trigger_a_run(daemon, source):
    (source / "cache").mkdir()
    process = daemon(BACKUP_EXCLUDE="*.tmp,cache/")
    process.wait_for_output("saved")
    (source / "scratch.tmp").write_text("ignored")
    (source / "cache" / "blob").write_text("ignored too")
    time.sleep(3)  # several debounce periods: a run would have started by now
    assert process.output().count("run started") == 1
    (source / "real.txt").write_text("counted")
    process.wait_for_output("run started", count=2, timeout=15)
    process.wait_for_output("saved", count=2, timeout=15)
    paths = snapshot_paths(process.env)
    assert f"{source}/real.txt" in paths and f"{source}/scratch.tmp" not in paths
    assert process.stop() == 0


def test_a_future_dated_snapshot_neither_parents_nor_outlives_the_daemons(daemon, source, tmp_path):
    """A snapshot once saved by a clock a year ahead, with old content, on a file:// repository."""
    env = daemon_env(source, tmp_path, BACKUP_KEEP_LAST="1")
    subprocess.run([sys.executable, "-m", "watcher", "backup"], env=env, check=True, capture_output=True)
    folder = tmp_path / "repo" / "snapshots"
    (old,) = folder.iterdir()
    document = json.loads(old.read_text())
    ahead = datetime.now(UTC) + timedelta(days=365)
    document["time"] = ahead.isoformat()
    future = ahead.strftime("%Y%m%dT%H%M%SZ-") + "0badc10c"
    (folder / future).write_text(json.dumps(document))
    (source / "sub/b.txt").write_text("beta, changed after the future-dated snapshot")
    process = daemon(BACKUP_KEEP_LAST="1")
    process.wait_for_output("saved")
    (source / "a.txt").write_text("alpha, changed while the daemon watches")
    process.wait_for_output("saved", count=2, timeout=20)
    assert process.stop() == 0
    ids = [snapshot["id"] for snapshot in watcher_json(env, "snapshots")]
    assert len(ids) == 2 and future in ids, "keep last 1 keeps the daemon's last; the future-dated one stays"
    subprocess.run([sys.executable, "-m", "watcher", "restore", "latest", "--to", str(tmp_path / "out")], env=env,
                   check=True, capture_output=True)
    restored = tmp_path / "out" / str(source).lstrip("/")
    assert (restored / "a.txt").read_text() == "alpha, changed while the daemon watches"
    assert (restored / "sub/b.txt").read_text() == "beta, changed after the future-dated snapshot"
