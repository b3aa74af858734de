"""Backup and restore on the memory backend and a real file system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import backup, describe_tree, keep_growing, make_tree, open_repository
from watcher.actions.restore import run_restore
from watcher.backends.memory import MemoryBackend
from watcher.errors import SnapshotNotFoundError
from watcher.repository import iter_tree
from watcher.snapshot import Node, encode_tree


@pytest.fixture
def source(tmp_path: Path) -> Path:
    tree = make_tree(tmp_path / "src", {
        "a.txt": "alpha",
        "sub/b.bin": os.urandom(3 * 1024 * 1024),
        "sub/deeper/c.txt": "gamma",
        "empty/": "/",
        "link": "->a.txt",
        "dangling": "->nowhere/at/all",
    })
    os.chmod(tree / "a.txt", 0o640)
    os.utime(tree / "sub/deeper/c.txt", ns=(1_000_000_000, 1_500_000_123))
    return tree


def restored(tmp_path: Path, source: Path) -> Path:
    return tmp_path / "out" / str(source).lstrip("/")


def test_round_trip_keeps_content_modes_times_links_and_empty_folders(tmp_path, source):
    repository = open_repository(state_dir=tmp_path / "state")
    result = backup(repository, source)
    assert result.snapshot is not None
    assert result.summary.new == 5 and result.summary.files == 5
    outcome = run_restore(repository, result.snapshot, tmp_path / "out")
    assert outcome.errors == []
    assert describe_tree(restored(tmp_path, source)) == describe_tree(source)


def test_unchanged_run_adds_no_snapshot_and_reads_nothing(tmp_path, source):
    repository = open_repository(state_dir=tmp_path / "state")
    backup(repository, source)
    old = os.path.getmtime(source / "a.txt") - 10
    for path in source.rglob("*"):  # out of the "racy" window so the cache may trust them
        if not path.is_symlink():
            os.utime(path, (old, old))
    backup(repository, source)
    again = backup(repository, source)
    assert again.snapshot is None
    assert again.summary.bytes_read == 0
    assert again.summary.unchanged == 5


def test_counts_new_changed_removed(tmp_path, source):
    repository = open_repository(state_dir=tmp_path / "state")
    backup(repository, source)
    (source / "a.txt").write_text("alpha changed")
    (source / "new.txt").write_text("new")
    (source / "sub/deeper/c.txt").unlink()
    result = backup(repository, source)
    summary = result.summary
    assert (summary.new, summary.changed, summary.removed) == (1, 1, 1)
    assert summary.unchanged == 3


def test_unchanged_content_is_never_uploaded_twice(tmp_path, source):
    backend = MemoryBackend()
    repository = open_repository(backend, tmp_path / "state")
    backup(repository, source)
    size_before = sum(len(v) for k, v in backend.objects.items() if k.startswith("packs/"))
    (source / "copy.bin").write_bytes((source / "sub/b.bin").read_bytes())
    result = backup(repository, source)
    size_after = sum(len(v) for k, v in backend.objects.items() if k.startswith("packs/"))
    assert result.summary.bytes_added < 10_000
    assert size_after - size_before < 10_000


def test_losing_the_cache_costs_time_not_correctness(tmp_path, source):
    backend = MemoryBackend()
    (tmp_path / "state2").mkdir()  # before the first run: the parent folder's mtime is in the snapshot
    first = open_repository(backend, tmp_path / "state1")
    backup(first, source)
    second = open_repository(backend, tmp_path / "state2")
    result = backup(second, source)
    assert result.snapshot is None  # same content: nothing new
    assert result.summary.bytes_read > 0 and result.summary.bytes_added == 0


def test_cache_naming_missing_content_is_not_trusted(tmp_path, source):
    """A cache from another repository (or a pruned one) must not produce a snapshot with holes."""
    state = tmp_path / "state"
    old = os.path.getmtime(source / "a.txt") - 10
    for path in source.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (old, old))
    backup(open_repository(MemoryBackend(), state), source)
    other = MemoryBackend()
    repository = open_repository(other, state)
    repository.cache.db.execute("UPDATE files SET rowid = rowid")  # same cache file, other repository id
    result = backup(repository, source)
    run_restore(repository, result.snapshot, tmp_path / "out")
    assert describe_tree(restored(tmp_path, source)) == describe_tree(source)


def test_excludes_apply_relative_to_the_source(tmp_path):
    source = make_tree(tmp_path / "src", {
        "keep.txt": "k", "skip.tmp": "s", "cache/x": "x", "a/node_modules/y": "y", "a/b.txt": "b",
    })
    repository = open_repository()
    result = backup(repository, source, exclude=("*.tmp", "cache/", "**/node_modules"))
    paths = {path for path, _ in iter_tree(repository, result.snapshot.tree)}
    base = str(source)
    assert f"{base}/keep.txt" in paths and f"{base}/a/b.txt" in paths
    assert not any(p.endswith(("skip.tmp", "/cache", "node_modules")) for p in paths)


def test_several_sources_share_their_parent_folders(tmp_path):
    one = make_tree(tmp_path / "one", {"x": "1"})
    two = make_tree(tmp_path / "two", {"y": "2"})
    repository = open_repository()
    result = backup(repository, one, two)
    paths = {path for path, _ in iter_tree(repository, result.snapshot.tree)}
    assert f"{one}/x" in paths and f"{two}/y" in paths


def test_file_changing_while_read_is_read_again(tmp_path, monkeypatch):
    source = make_tree(tmp_path / "src", {"grow.txt": "first"})
    repository = open_repository()
    from watcher import scan

    real_fstat = os.fstat
    calls = {"n": 0}

    def fstat_then_write(fd):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first read: the file changes under us
            with open(source / "grow.txt", "a") as handle:
                handle.write(" and more")
        return real_fstat(fd)

    monkeypatch.setattr(scan.os, "fstat", fstat_then_write)
    result = backup(repository, source)
    monkeypatch.undo()
    assert result.warnings == []
    run_restore(repository, result.snapshot, tmp_path / "out")
    assert (restored(tmp_path, source) / "grow.txt").read_text() == "first and more"


def test_file_that_never_stops_changing_is_reported_not_stored_torn(tmp_path, monkeypatch):
    source = make_tree(tmp_path / "src", {"busy.log": "x", "calm.txt": "y"})
    repository = open_repository()
    keep_growing(monkeypatch, source / "busy.log")
    result = backup(repository, source)
    monkeypatch.undo()
    assert len(result.warnings) == 1 and "busy.log" in result.warnings[0]
    paths = {path for path, _ in iter_tree(repository, result.snapshot.tree)}
    assert f"{source}/calm.txt" in paths and f"{source}/busy.log" not in paths


def test_insertion_in_a_large_file_reuploads_only_nearby_chunks(tmp_path):
    data = os.urandom(24 * 1024 * 1024)
    source = make_tree(tmp_path / "src", {"big": data})
    repository = open_repository()
    backup(repository, source)
    (source / "big").write_bytes(data[:5_000_000] + b"inserted!" + data[5_000_000:])
    result = backup(repository, source)
    assert result.summary.bytes_added < 12 * 1024 * 1024  # two chunks at most, not the whole file


def test_restore_selected_paths_only(tmp_path, source):
    repository = open_repository()
    snapshot = backup(repository, source).snapshot
    run_restore(repository, snapshot, tmp_path / "out", [f"{source}/sub/deeper"])
    out = restored(tmp_path, source)
    assert (out / "sub/deeper/c.txt").read_text() == "gamma"
    assert not (out / "a.txt").exists() and not (out / "sub/b.bin").exists()


def test_restore_of_a_path_not_in_the_snapshot_fails(tmp_path, source):
    repository = open_repository()
    snapshot = backup(repository, source).snapshot
    with pytest.raises(SnapshotNotFoundError):
        run_restore(repository, snapshot, tmp_path / "out", ["/not/there"])


def test_restore_leaves_unrelated_files_and_never_follows_links_out(tmp_path, source):
    repository = open_repository()
    snapshot = backup(repository, source).snapshot
    out = tmp_path / "out"
    unrelated = out / "unrelated.txt"
    unrelated.parent.mkdir(parents=True)
    unrelated.write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    first = str(source).lstrip("/").split("/")[0]
    (out / first).symlink_to(outside)  # a link in DIR where the snapshot has a folder
    result = run_restore(repository, snapshot, out)
    assert result.errors, "a symlink in the way must be refused, not followed"
    assert list(outside.iterdir()) == []
    assert unrelated.read_text() == "mine"


def test_crafted_tree_cannot_escape(tmp_path):
    repository = open_repository()
    writer = repository.writer()
    evil = encode_tree([Node("..", "file", 0o644, 0, content=())]).replace(b'".."', b'"..\\/x"')
    from watcher.snapshot import digest
    writer.add(digest(evil), "tree", evil)
    writer.finish()
    from watcher.errors import IntegrityError
    with pytest.raises(IntegrityError):
        repository.load_tree(digest(evil))


def test_corrupt_pack_fails_restore_of_affected_files(tmp_path, source):
    backend = MemoryBackend()
    repository = open_repository(backend)
    snapshot = backup(repository, source).snapshot
    for key, value in backend.objects.items():
        if key.startswith("packs/") and len(value) > 1_000_000:
            damaged = bytearray(value)
            damaged[100] ^= 0xFF
            backend.objects[key] = bytes(damaged)
    result = run_restore(repository, snapshot, tmp_path / "out")
    assert any("b.bin" in error for error in result.errors)
    assert not (restored(tmp_path, source) / "sub/b.bin").exists()


@pytest.mark.timeout(60)
def test_restore_goes_on_past_files_it_cannot_write(tmp_path):
    """Packs prefetched for files that fail are dropped; the restore neither stalls nor stops."""
    from watcher.repository import Repository

    source = make_tree(tmp_path / "src", {
        **{f"a/f{i}.bin": os.urandom(300_000) for i in range(12)},
        **{f"b/g{i}.bin": os.urandom(300_000) for i in range(12)},
    })
    repository = Repository(MemoryBackend(), None)
    repository.open(create=True, pack_size=500_000)  # about two files a pack: many packs
    repository.load_index()
    snapshot = backup(repository, source).snapshot
    out = tmp_path / "out"
    blocked = out / str(source).lstrip("/") / "a"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the folder a/ should be")
    result = run_restore(repository, snapshot, out)
    assert result.files == 12 and len(result.errors) >= 12
    assert all(f"{source}/a" in error for error in result.errors)
    for i in range(12):
        assert (out / str(source).lstrip("/") / f"b/g{i}.bin").read_bytes() == (source / f"b/g{i}.bin").read_bytes()


def test_a_repository_kept_open_uses_the_cache_from_its_second_run_on(tmp_path, source):
    """The daemon keeps one repository (and cache) open: its later runs must not re-read files."""
    repository = open_repository(state_dir=tmp_path / "state")
    old = os.path.getmtime(source / "a.txt") - 10
    for path in source.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (old, old))
    first = backup(repository, source)
    assert first.summary.bytes_read > 0
    second = backup(repository, source)
    assert second.summary.bytes_read == 0
