"""Event-driven runs look only at the changed paths, and give the snapshot a full scan gives."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import replace
from pathlib import Path

from tests.helpers import make_tree, open_repository
from watcher.actions.backup import BackupOptions, ChangedPaths, run_backup
from watcher.backends.memory import MemoryBackend
from watcher.repository import Repository
from watcher.snapshot import Node


def _tree(tmp_path: Path) -> Path:
    files = {f"d{i % 7}/e{i % 3}/f{i}.txt": f"content {i}" for i in range(120)}
    files["empty/"] = "/"
    return make_tree(tmp_path / "src", files)


def _way(repository: Repository, tree_id: str, source: Path) -> list[Node]:
    """The nodes of a snapshot's tree from its root down to `source` (the folders above it, then it)."""
    nodes: list[Node] = []
    for name in str(source).strip("/").split("/"):
        node = next(node for node in repository.load_tree(tree_id) if node.name == name)
        assert node.subtree is not None
        nodes.append(node)
        tree_id = node.subtree
    return nodes


def test_changed_paths_knows_the_way_and_what_lies_below():
    changes = ChangedPaths(["/a/b/c.txt", "/x/moved-in"])
    assert changes.touches("/a/b/c.txt") and changes.touches("/a/b") and changes.touches("/a")
    assert changes.touches("/x/moved-in/deep/file")
    assert not changes.touches("/a/other") and not changes.touches("/a/b/d.txt")


def test_event_driven_run_equals_a_full_scan(tmp_path):
    """Everything below the source is the same as a full scan finds. The folders above the source
    (tmp_path, /tmp...) keep the mtime their repository first recorded (backup._ancestor), so two
    repositories started at different moments may differ there, and only there: another process
    creating a file in /tmp meanwhile is enough. Here tmp_path's mtime changes every round."""
    source = _tree(tmp_path)
    options = BackupOptions((source,), host="h")
    events_repo = open_repository(MemoryBackend(), tmp_path / "state-events")
    full_repo = open_repository(MemoryBackend(), tmp_path / "state-full")
    run_backup(events_repo, options)
    rng = random.Random(7)
    for round_number in range(5):
        changed: list[str] = []
        files = sorted(p for p in source.rglob("*") if p.is_file())
        for path in rng.sample(files, 3):  # modify
            path.write_text(f"changed in round {round_number}")
            changed.append(str(path))
        victim = rng.choice(files)  # delete
        if victim.exists():
            victim.unlink()
            changed.append(str(victim))
        moved = rng.choice([p for p in source.rglob("*") if p.is_file()])  # rename
        target = moved.with_name(f"renamed-{round_number}.txt")
        moved.rename(target)
        changed += [str(moved), str(target)]
        new_dir = source / f"new{round_number}" / "inner"  # a folder with content appears
        new_dir.mkdir(parents=True)
        (new_dir / "x.txt").write_text("x")
        changed.append(str(new_dir.parent))
        gone = source / f"d{round_number}"  # a whole folder disappears
        if gone.exists():
            shutil.rmtree(gone)
            changed.append(str(gone))
        os.utime(tmp_path, ns=(0, 1_000_000_000 * (round_number + 1)))  # what a busy /tmp does
        by_events = run_backup(events_repo, options, changed=changed)
        by_scan = run_backup(full_repo, options)
        assert by_events.snapshot is not None and by_scan.snapshot is not None
        events_way = _way(events_repo, by_events.snapshot.tree, source)
        scan_way = _way(full_repo, by_scan.snapshot.tree, source)
        assert events_way[-1] == scan_way[-1]  # the source: its own metadata, and every entry below it
        assert [replace(node, mtime_ns=0, subtree=None) for node in events_way[:-1]] == [
            replace(node, mtime_ns=0, subtree=None) for node in scan_way[:-1]]
        assert not by_events.full_scan
        assert by_events.summary.files == by_scan.summary.files
        assert by_events.summary.bytes == by_scan.summary.bytes
        assert by_events.summary.dirs == by_scan.summary.dirs  # what bounds a snapshot's expansion


def test_event_driven_run_reads_only_what_changed(tmp_path, monkeypatch):
    source = _tree(tmp_path)
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    options = BackupOptions((source,), host="h")
    run_backup(repository, options)
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):  # folders are listed through their descriptor
        listed.append(os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    target = source / "d3/e1/f10.txt"
    target.write_text("new content")
    result = run_backup(repository, options, changed=[str(target)])
    assert result.summary.changed == 1 and result.summary.new == 0
    assert listed == [str(source), str(source / "d3"), str(source / "d3/e1")]
