"""Retention decisions (restic's --keep-* meaning) and `forget` removing only unneeded data."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import backup, describe_tree, make_tree, open_repository
from watcher.actions.check import run_check
from watcher.actions.prune import run_forget
from watcher.actions.restore import run_restore
from watcher.backends.memory import MemoryBackend
from watcher.config import Retention
from watcher.locks import RepositoryLockedError, locked
from watcher.repository import Repository
from watcher.retention import decide
from watcher.snapshot import Snapshot


def snapshots_every(hours: float, count: int, host: str = "h") -> list[Snapshot]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [Snapshot(f"s{i:03d}", start + timedelta(hours=hours * i), host, ("/src",), "t") for i in range(count)]


def kept(decisions) -> list[str]:
    return [d.snapshot.id for d in decisions if d.keep]


def test_no_policy_keeps_everything():
    assert len(kept(decide(snapshots_every(1, 5), Retention()))) == 5


def test_keep_last():
    assert kept(decide(snapshots_every(1, 5), Retention(last=2))) == ["s003", "s004"]


def test_keep_daily_takes_the_newest_of_each_day(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        decisions = decide(snapshots_every(6, 12), Retention(daily=2))  # 4 a day for 3 days
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert kept(decisions) == ["s007", "s011"]
    assert next(d for d in decisions if d.snapshot.id == "s011").reasons == ["newest", "daily"]


def test_an_unfilled_count_keeps_the_oldest():
    decisions = decide(snapshots_every(1, 3), Retention(monthly=5))
    assert kept(decisions) == ["s000", "s001", "s002"] or "s000" in kept(decisions)
    assert "oldest (monthly)" in next(d for d in decisions if d.snapshot.id == "s000").reasons


def test_rules_are_ored_and_the_newest_of_each_host_stays():
    mine, theirs = snapshots_every(24, 10), snapshots_every(24, 3, host="other")
    decisions = decide(mine + theirs, Retention(last=1, weekly=1))
    assert "s009" in kept(decisions)
    assert sum(1 for d in decisions if d.keep and d.snapshot.host == "other") >= 1


@pytest.fixture
def repository_with_history(tmp_path):
    source = make_tree(tmp_path / "src", {"keep.txt": "kept all along", "big.bin": os.urandom(2_000_000)})
    backend = MemoryBackend()
    repository = open_repository(backend, tmp_path / "state")
    backup(repository, source)
    (source / "big.bin").write_bytes(os.urandom(2_000_000))  # the first big.bin is needed only by snapshot 1
    backup(repository, source)
    (source / "new.txt").write_text("third")
    backup(repository, source)
    return repository, backend, source


def test_forget_removes_only_data_no_snapshot_needs(repository_with_history, tmp_path):
    repository, backend, source = repository_with_history
    before = sum(len(v) for k, v in backend.objects.items() if k.startswith("packs/"))
    dry = run_forget(repository, Retention(last=2), dry_run=True)
    assert dry.removed_snapshots == 1 and len([k for k in backend.objects if k.startswith("snapshots/")]) == 3
    result = run_forget(repository, Retention(last=2))
    assert result.removed_snapshots == 1 and result.deleted_packs + result.repacked_packs >= 1
    after = sum(len(v) for k, v in backend.objects.items() if k.startswith("packs/"))
    assert before - after >= 2_000_000
    fresh = open_repository(backend, tmp_path / "state-after")
    assert run_check(fresh, read_data=True).sound
    assert len(fresh.list_snapshots()) == 2
    run_restore(fresh, fresh.find_snapshot("latest"), tmp_path / "out")
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)
    assert not [k for k in backend.objects if k.startswith("locks/")]


def test_forget_refuses_while_a_backup_holds_the_repository(repository_with_history):
    repository, backend, _ = repository_with_history
    backend.put_bytes("locks/otherhost-1-aaaa", json.dumps(
        {"host": "otherhost", "pid": 1, "time": time.time(), "exclusive": False}).encode())
    with pytest.raises(RepositoryLockedError, match="in use by a backup or check on otherhost"):
        run_forget(repository, Retention(last=1))
    assert len([k for k in backend.objects if k.startswith("snapshots/")]) == 3


def test_stale_locks_are_ignored(repository_with_history):
    repository, backend, _ = repository_with_history
    backend.put_bytes("locks/otherhost-1-bbbb", json.dumps(
        {"host": "otherhost", "pid": 1, "time": time.time() - 3 * 3600, "exclusive": True}).encode())
    with locked(repository, exclusive=True):
        pass


def test_a_backup_waits_for_a_running_forget(repository_with_history):
    repository, backend, _ = repository_with_history
    backend.put_bytes("locks/otherhost-2-cccc", json.dumps(
        {"host": "otherhost", "pid": 2, "time": time.time(), "exclusive": True}).encode())
    with pytest.raises(RepositoryLockedError, match="creation on otherhost"), locked(repository, exclusive=False):
        pass


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_forget_never_loses_what_a_kept_snapshot_needs(tmp_path, seed):
    """Random histories, random policies: every kept snapshot still restores exactly."""
    import random

    from watcher.actions.backup import BackupOptions, run_backup
    from watcher.repository import Repository

    rng = random.Random(seed)
    source = make_tree(tmp_path / "src", {f"d{i % 4}/f{i}": os.urandom(rng.choice((10, 5000, 300_000)))
                                          for i in range(30)})
    backend = MemoryBackend()
    repository = Repository(backend, tmp_path / "state")
    repository.open(create=True, pack_size=200_000)  # many small packs: partly used ones get repacked
    repository.load_index()
    expected: dict[str, dict] = {}
    for round_number in range(8):
        files = sorted(p for p in source.rglob("*") if p.is_file())
        for path in rng.sample(files, 4):
            path.write_bytes(os.urandom(rng.choice((10, 5000, 300_000))))
        if round_number % 3 == 0:
            rng.choice(files).unlink(missing_ok=True)
        result = run_backup(repository, BackupOptions((source,), host="h"))
        if result.snapshot is not None:
            expected[result.snapshot.id] = describe_tree(source)
        if round_number % 2:
            run_forget(repository, Retention(last=rng.choice((1, 2, 3))))
            repository.close()
            repository = Repository(backend, tmp_path / "state")
            repository.open()
            repository.load_index()
    fresh = Repository(backend, tmp_path / "fresh-state")
    fresh.open()
    check = run_check(fresh, read_data=True)
    assert check.sound, check.problems
    remaining = fresh.list_snapshots()
    assert remaining
    for snapshot in remaining:
        out = tmp_path / f"out-{snapshot.id}"
        assert run_restore(fresh, snapshot, out).errors == []
        assert describe_tree(out / str(source).lstrip("/")) == expected[snapshot.id]


def test_a_long_lived_repository_sees_what_a_forget_removed(repository_with_history, tmp_path):
    """The daemon keeps its repository open: after another process's forget it must not trust old blobs."""
    daemon_view, backend, source = repository_with_history
    other = open_repository(backend, tmp_path / "other-state")
    run_forget(other, Retention(last=1))
    daemon_view.load_index()
    stored = {key.rsplit("/", 1)[1] for key in backend.objects if key.startswith("packs/")}
    assert {entry.pack for entry in daemon_view.blobs.values()} <= stored
    from tests.helpers import backup
    (source / "again.txt").write_text("after the forget")
    result = backup(daemon_view, source)
    fresh = open_repository(backend, tmp_path / "fresh")
    assert run_check(fresh, read_data=True).sound
    run_restore(fresh, fresh.find_snapshot(result.snapshot.id), tmp_path / "out")
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)


def test_forget_keeps_the_last_whole_copy_of_a_source_later_snapshots_lost(tmp_path):
    """An unmounted disk: later snapshots mark it incomplete; `forget` (by hand, from cron, from
    another host) must keep the newest snapshot that holds it whole, whatever the rules say."""
    disk = make_tree(tmp_path / "disk", {"photos.jpg": "the only copy"})
    home = make_tree(tmp_path / "home", {"notes.txt": "v0"})
    repository = open_repository()
    whole = backup(repository, disk, home).snapshot
    for path in disk.iterdir():
        path.unlink()  # the disk is gone; its mount point stays, empty
    for version in (1, 2):
        (home / "notes.txt").write_text(f"v{version}")
        later = backup(repository, disk, home).snapshot
        assert later is not None and later.incomplete.sources == (str(disk),)
    result = run_forget(repository, Retention(last=2))
    assert result.removed_snapshots == 0
    reasons = {decision.snapshot.id: decision.reasons for decision in result.decisions}
    assert reasons[whole.id] == [f"last whole copy of {disk}"]
    out = tmp_path / "out"
    assert not run_restore(repository, whole, out).errors
    assert (out / str(disk).lstrip("/") / "photos.jpg").read_text() == "the only copy"


def test_index_files_stay_small_however_many_blobs_forget_names_again(tmp_path, monkeypatch):
    from watcher import repository as repository_module

    monkeypatch.setattr(repository_module, "INDEX_BLOBS", 5)
    source = make_tree(tmp_path / "src", {f"f{i}.txt": f"content {i}" for i in range(30)})
    repository = Repository(MemoryBackend(), None)
    repository.backend.open()
    repository.open(create=True, pack_size=40)  # a pack or two of blobs each
    repository.load_index()
    backup(repository, source)
    for i in range(10):
        (source / f"f{i}.txt").write_text(f"changed {i}")
    latest = backup(repository, source).snapshot
    result = run_forget(repository, Retention(last=1))
    assert result.removed_snapshots == 1 and result.repacked_packs + result.deleted_packs > 0
    sizes = [sum(len(pack["blobs"]) for pack in json.loads(repository.backend.get_bytes(info.key))["packs"])
             for info in repository.backend.list("index")]
    assert len(sizes) >= 41 // 5 and max(sizes) <= 5, sizes
    assert run_check(repository, read_data=True).sound
    out = tmp_path / "out"
    assert not run_restore(repository, latest, out).errors
    assert describe_tree(out / str(source).lstrip("/")) == describe_tree(source)
