"""A repository reads and deletes only the names it writes (docs/FORMAT.md), so that another
repository under a longer prefix of the same bucket or folder (`…/nest` and `…/nest/snapshots`) is
neither taken for damage nor pruned as leftovers; and no new repository is made over one whose
config is gone. Real local folders, as a `file://` target or an S3 prefix lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import backup, describe_tree, make_tree, open_repository
from watcher.actions.check import run_check
from watcher.actions.prune import run_forget
from watcher.actions.restore import run_restore
from watcher.backends.local import LocalBackend
from watcher.config import Retention
from watcher.errors import RepositoryError
from watcher.repository import Repository


def _two_snapshots(repository: Repository, source: Path) -> list[str]:
    ids = []
    for round_ in range(2):
        (source / f"round-{round_}.bin").write_bytes(os.urandom(200_000))
        result = backup(repository, source)
        assert result.snapshot is not None
        ids.append(result.snapshot.id)
    return ids


@pytest.mark.parametrize("inner", ["snapshots", "packs", "index", "keys", "packs/ab"])
def test_a_repository_inside_another_ones_folder_is_left_alone(tmp_path, inner):
    outer_root = tmp_path / "nest"
    outer = open_repository(LocalBackend(outer_root))
    outer_source = make_tree(tmp_path / "outer-src", {"a.txt": "outer"})
    outer_ids = _two_snapshots(outer, outer_source)
    nested = open_repository(LocalBackend(outer_root / inner))
    nested_source = make_tree(tmp_path / "nested-src", {"b.txt": "nested"})
    nested_ids = _two_snapshots(nested, nested_source)

    outer.load_index()
    assert outer.snapshot_ids() == sorted(outer_ids)
    assert run_check(outer, read_data=True).problems == []
    forgot = run_forget(outer, Retention(last=1))
    assert forgot.removed_snapshots == 1 and forgot.unreadable == []
    assert run_check(outer, read_data=True).problems == []

    nested.load_index()
    assert nested.snapshot_ids() == sorted(nested_ids)
    assert run_check(nested, read_data=True).problems == []
    for snapshot_id in nested_ids:
        out = tmp_path / f"out-{snapshot_id}"
        run_restore(nested, nested.load_snapshot(snapshot_id), out)
        assert (out / str(nested_source).lstrip("/") / "b.txt").read_text() == "nested"
    latest = outer.load_snapshot(outer.snapshot_ids()[-1])
    run_restore(outer, latest, tmp_path / "outer-out")
    assert describe_tree(tmp_path / "outer-out" / str(outer_source).lstrip("/")) == describe_tree(outer_source)


def test_no_new_repository_over_one_whose_config_is_gone(tmp_path):
    root = tmp_path / "repo"
    repository = open_repository(LocalBackend(root))
    _two_snapshots(repository, make_tree(tmp_path / "src", {"a.txt": "a"}))
    (root / "config").unlink()
    again = Repository(LocalBackend(root), None)
    with pytest.raises(RepositoryError, match=r"holds a repository's snapshots/ but no config: its config is lost"):
        again.open(create=True)
    with pytest.raises(RepositoryError, match="but no config"):  # a reading command, or doctor, says so too
        Repository(LocalBackend(root), None).open()
    assert not (root / "config").exists()
    for folder in ("snapshots", "index"):  # the packs alone are enough to refuse
        for path in (root / folder).iterdir():
            path.unlink()
    with pytest.raises(RepositoryError, match=r"holds a repository's packs/ but no config"):
        Repository(LocalBackend(root), None).open(create=True)


def test_keys_alone_are_a_creation_cut_short_and_a_new_repository_is_made(tmp_path):
    root = tmp_path / "repo"
    (root / "keys").mkdir(parents=True)
    (root / "keys" / ("0" * 64)).write_bytes(b"a key file a killed creation left")
    repository = Repository(LocalBackend(root), None)
    repository.open(create=True)
    assert (root / "config").exists()
