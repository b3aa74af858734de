"""The walk: few folders kept open, back only into the very folders it left; marks carried forward."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import pytest

from tests.helpers import backup, keep_growing, make_tree, open_repository
from watcher import fields
from watcher.actions import backup as backup_module
from watcher.actions.restore import run_restore
from watcher.repository import iter_tree


def open_below(root: Path) -> list[str]:
    """What this process holds open below `root` (counting all descriptors would also count
    other tests' threads)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [path for path in held if path == str(root) or path.startswith(f"{root}/")]


def walk_with_a_move(source: Path, moves: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Back up `source` keeping 2 folders open below it; while the walk is at the bottom of
    a/b/c/d (so "a" is closed), make `moves`. Returns the paths stored."""
    monkeypatch.setattr(backup_module, "OPEN_FOLDERS", 2)
    real_lstat = os.lstat

    def lstat_then_move(path, *args, **kwargs):
        result = real_lstat(path, *args, **kwargs)
        if path == "file.txt" and (source / "a/b").exists():
            for old, new in moves:
                os.rename(source / old, source / new)
        return result

    monkeypatch.setattr(os, "lstat", lstat_then_move)
    repository = open_repository()
    result = backup(repository, source)
    monkeypatch.undo()
    assert not open_below(source), "the walk leaked a folder's descriptor"
    assert result.snapshot is not None
    stored, pending = [], [("", result.snapshot.tree)]
    while pending:
        prefix, tree = pending.pop()
        for node in repository.load_tree(tree):
            stored.append(f"{prefix}/{node.name}")
            if node.subtree:
                pending.append((f"{prefix}/{node.name}", node.subtree))
    return [path[len(str(source)) + 1:] for path in stored if path.startswith(str(source) + "/")] + result.warnings


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"a/b/c/d/file.txt": "deep", "a/z.txt": "after b", "other/": "/"})


def test_a_closed_folder_is_reopened_by_name_when_its_child_moved_out(source, monkeypatch):
    stored = walk_with_a_move(source, [("a/b", "other/b")], monkeypatch)
    assert "a/z.txt" in stored and "a/b/c/d/file.txt" in stored
    assert not any("moved" in line for line in stored)


def test_a_closed_folder_that_moved_away_is_not_stored_in_the_wrong_place(source, monkeypatch):
    stored = walk_with_a_move(source, [("a/b", "other/b"), ("a", "gone")], monkeypatch)
    assert f"cannot read folder {source}/a: it moved while being read" in stored
    assert not any(path.startswith("a/") for path in stored)


def test_a_kept_previous_version_stays_marked_until_the_file_is_read_again(tmp_path, monkeypatch):
    source = make_tree(tmp_path / "src", {"busy.log": "first", "calm.txt": "y"})
    repository = open_repository(state_dir=tmp_path / "state")  # its record makes the later run event-driven
    backup(repository, source)
    (source / "busy.log").write_text("second, never read whole")
    (source / "calm.txt").write_text("y2")  # a snapshot is saved (the kept file alone is no change)
    keep_growing(monkeypatch, source / "busy.log")
    kept = backup(repository, source)
    monkeypatch.undo()
    busy = f"{source}/busy.log"
    assert kept.snapshot is not None and kept.snapshot.incomplete.kept_previous == (busy,)
    assert any(f"kept the previous version of {busy}" in warning for warning in kept.warnings)
    (source / "calm.txt").write_text("z")
    options = backup_module.BackupOptions((source,), host="test")
    by_events = backup_module.run_backup(repository, options, changed=[str(source / "calm.txt")])
    assert not by_events.full_scan
    assert by_events.snapshot is not None and by_events.snapshot.incomplete.kept_previous == (busy,)
    full = backup(repository, source)
    assert full.snapshot is not None and full.snapshot.incomplete.kept_previous == ()


def test_a_file_time_beyond_year_9999_is_stored_as_the_last_time_a_tree_holds(tmp_path):
    """tmpfs and btrfs keep any 64-bit time: such a file must not make its folder's tree unreadable."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
        source = make_tree(Path(shm) / "src", {"far.txt": "from the far future", "near.txt": "now"})
        far = 260_000_000_000 * 10**9  # year 10209
        os.utime(source / "far.txt", ns=(far, far))
        if os.stat(source / "far.txt").st_mtime_ns != far:
            pytest.skip("this tmpfs cannot hold such a time")
        repository = open_repository()
        result = backup(repository, source)
        assert result.snapshot is not None
        entries = dict(iter_tree(repository, result.snapshot.tree))
        assert entries[f"{source}/far.txt"].mtime_ns == fields.NS_MAX
        restored = run_restore(repository, result.snapshot, tmp_path / "out")
        assert not restored.errors
        assert (tmp_path / "out" / str(source).lstrip("/") / "far.txt").read_text() == "from the far future"


def test_a_source_back_after_a_lost_run_is_not_marked_lost_by_an_event_driven_run(tmp_path):
    disk = make_tree(tmp_path / "disk", {"photo.jpg": "p"})
    home = make_tree(tmp_path / "home", {"notes.txt": "v0"})
    repository = open_repository(state_dir=tmp_path / "state")
    backup(repository, disk, home)
    disk.rename(tmp_path / "unmounted")
    lost = backup(repository, disk, home).snapshot
    assert lost is not None and lost.incomplete.sources == (str(disk),)
    (tmp_path / "unmounted").rename(disk)  # mounted again
    (home / "notes.txt").write_text("v1")
    options = backup_module.BackupOptions((disk, home), host="test")
    back = backup_module.run_backup(repository, options, changed=[str(home / "notes.txt")])
    assert not back.full_scan and back.snapshot is not None
    assert back.snapshot.incomplete.sources == ()
    assert f"{disk}/photo.jpg" in dict(iter_tree(repository, back.snapshot.tree))
