"""The walk keeps few folders open, and goes back only into the very folders it left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import backup, make_tree, open_repository
from watcher.actions import backup as backup_module


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
    descriptors = len(os.listdir("/proc/self/fd"))
    repository = open_repository()
    result = backup(repository, source)
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == descriptors
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
