"""A run that lost data (a source gone or emptied, a file that never stops changing) is a warning,
and never the ground for retention: the good snapshots stay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import make_tree
from tests.integration.daemon_helpers import DaemonProcess, daemon_env, wait_until, watcher_json
from tests.integration.test_cli_sftp import sftp_env
from watcher.cli import main

pytestmark = pytest.mark.timeout(240)


def file_env(sources: list[Path], tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BACKUP_SOURCES": ",".join(map(str, sources)), "BACKUP_TARGET": f"file://{tmp_path}/repo",
            "BACKUP_STATE_DIR": str(tmp_path / "state"), "BACKUP_KEEP_LAST": "1", **extra}


def snapshots(capsys, env: dict[str, str]) -> list[dict]:
    capsys.readouterr()
    assert main(["snapshots", "--json"], env) == 0
    return json.loads(capsys.readouterr().out)


def backup(capsys, env: dict[str, str]) -> tuple[int, str]:
    code = main(["backup"], env)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def vanish_under_the_daemon(env: dict[str, str], source: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """A daemon backs up twice (retention keeps one), then its source vanishes (a disk unmounted):
    the next periodic rescan finds it gone."""
    process = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        process.wait_for_output("saved")
        (source / "a.txt").write_text("alpha 2")
        process.wait_for_output("saved", count=2)
        wait_until(lambda: len(listed(env)) == 1, 30, "retention to keep one snapshot")
        good = listed(env)
        source.rename(tmp_path / "unmounted")
        process.wait_for_output("saved", count=3, timeout=60)
        time.sleep(1)  # retention, if applied, follows the saved line
    finally:
        assert process.stop() == 0
    return process.output(), good


def listed(env: dict[str, str]) -> list[str]:
    return [str(snapshot["id"]) for snapshot in watcher_json(env, "snapshots")]


def test_a_vanished_source_keeps_the_good_snapshots(tmp_path):
    source = make_tree(tmp_path / "disk", {"a.txt": "alpha", "sub/b.txt": "beta"})
    env = daemon_env(source, tmp_path, BACKUP_KEEP_LAST="1", BACKUP_RESCAN_SECONDS="3")
    output, good = vanish_under_the_daemon(env, source, tmp_path)
    assert good[0] in listed(env)
    assert f"source {source}" in output and "retention not applied" in output


def test_an_emptied_source_keeps_the_good_snapshots_until_it_has_content_again(tmp_path, capsys):
    disk = make_tree(tmp_path / "disk", {"a.txt": "alpha", "sub/b.txt": "beta"})
    other = make_tree(tmp_path / "other", {"o.txt": "one"})
    env = file_env([disk, other], tmp_path)
    assert backup(capsys, env)[0] == 0
    good = snapshots(capsys, env)[0]["id"]
    for path in (disk / "a.txt", disk / "sub/b.txt", disk / "sub"):
        os.remove(path) if path.is_file() else path.rmdir()  # what an unmounted disk's mount point shows
    for round_number in range(2):  # still empty at the next run: still not ground for retention
        (other / "o.txt").write_text(f"changed {round_number}")
        code, output = backup(capsys, env)
        assert code == 3, output
        assert f"source {disk} is empty" in output and "retention not applied" in output
        assert good in [s["id"] for s in snapshots(capsys, env)]
    (disk / "back.txt").write_text("mounted again")
    assert backup(capsys, env)[0] == 0
    assert [s["id"] for s in snapshots(capsys, env)] != [good] and len(snapshots(capsys, env)) == 1


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
n = 0
while True:  # rewrite the file in place, without end
    n += 1
    os.pwrite(fd, n.to_bytes(8, "big") * 512, (n * 4096) % (8 << 20))
    if n == 1:
        print("writing", flush=True)
"""


def test_a_file_that_never_stops_changing_keeps_its_previous_version_marked(tmp_path, capsys):
    source = make_tree(tmp_path / "src", {"steady.txt": "steady", "busy.db": os.urandom(8 << 20)})
    busy = source / "busy.db"
    first = busy.read_bytes()
    env = file_env([source], tmp_path)
    assert backup(capsys, env)[0] == 0
    (source / "new.txt").write_text("new")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(busy)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        code, output = backup(capsys, env)
    finally:
        writer.kill()
        writer.wait()
    assert code == 3, output
    assert f"{busy}" in output and "previous version" in output
    latest = snapshots(capsys, env)[-1]
    document = json.loads((tmp_path / "repo" / "snapshots" / latest["id"]).read_text())
    assert document["incomplete"]["kept_previous"] == [str(busy)]
    assert main(["restore", "latest", "--to", str(tmp_path / "out")], env) == 0
    restored = tmp_path / "out" / str(source).lstrip("/")
    assert (restored / "busy.db").read_bytes() == first and (restored / "new.txt").read_text() == "new"


def test_a_vanished_source_over_sftp_keeps_the_good_snapshots(sshd_server, tmp_path):
    source = make_tree(tmp_path / "disk", {"a.txt": "alpha"})
    env = {**daemon_env(source, tmp_path, BACKUP_RESCAN_SECONDS="3"),
           **sftp_env(sshd_server, source, tmp_path, BACKUP_KEEP_LAST="1")}
    output, good = vanish_under_the_daemon(env, source, tmp_path)
    assert good[0] in listed(env)
    assert f"source {source}" in output and "retention not applied" in output


def test_a_source_whose_parent_folder_vanished_is_lost_too(tmp_path, capsys):
    """An unmounted disk takes the folders above the source with it (/mnt/disk/data)."""
    disk = tmp_path / "disk"
    source = make_tree(disk / "data", {"a.txt": "alpha"})
    other = make_tree(tmp_path / "other", {"o.txt": "one"})
    env = file_env([source, other], tmp_path)
    assert backup(capsys, env)[0] == 0
    good = snapshots(capsys, env)[0]["id"]
    (other / "o.txt").write_text("changed")
    disk.rename(tmp_path / "unmounted")
    real_folder = Path.is_dir
    # the configuration check at start sees the source; it is gone by the time the walk gets there
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "is_dir", lambda path: True if path == source else real_folder(path))
        code, output = backup(capsys, env)
    assert code == 3, output
    assert f"cannot read source {source}" in output and "retention not applied" in output
    assert good in [s["id"] for s in snapshots(capsys, env)]
