"""Many hosts, one repository: locks judged across clocks that differ, and the lease a holder keeps.

Another machine's lock is judged by its age, its `time` written by that machine's clock. These tests
write such locks with shifted times (a clock minutes behind or ahead) and check where the line is.
A holder's own lease is driven by a fake clock: a gap without a refresh (a machine asleep, a link
down) is a fault at an exact instant, and the step it guards must then not happen.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import backup, make_tree, open_repository
from watcher import locks
from watcher.actions import prune
from watcher.actions.backup import BackupOptions, run_backup
from watcher.actions.check import run_check
from watcher.backends.memory import MemoryBackend
from watcher.config import Retention
from watcher.locks import LEASE_SECONDS, STALE_SECONDS, LockExpiredError, RepositoryLockedError, locked
from watcher.repository import Repository

MINUTE = 60


class FakeClock:
    """A lease clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(locks, "lease_clock", fake)
    return fake


def foreign_lock(backend: MemoryBackend, *, age: float, exclusive: bool = False) -> None:
    """A live holder on another machine (another kernel: only the age can judge it), whose last refresh
    carries a `time` that is `age` seconds before our clock (negative: after it)."""
    document = {"host": "elsewhere", "pid": 4242, "time": time.time() - age, "exclusive": exclusive,
                "holder": "", "boot_id": "another-machine", "pid_namespace": "pid:[1]"}
    backend.put_bytes("locks/elsewhere-4242-00000000", json.dumps(document).encode())


def two_snapshots(tmp_path: Path) -> tuple[Repository, MemoryBackend]:
    backend = MemoryBackend()
    repository = open_repository(backend, tmp_path / "state")
    source = make_tree(tmp_path / "src", {"a.txt": "first " * 1000})
    backup(repository, source)
    (source / "a.txt").write_text("second " * 1000)
    backup(repository, source)
    return repository, backend


def pack_count(backend: MemoryBackend) -> int:
    return sum(key.startswith("packs/") for key in backend.objects)


@pytest.mark.parametrize("age", [
    LEASE_SECONDS + 10 * MINUTE,  # a holder at the end of its longest gap, its clock 10 minutes behind ours
    5 * MINUTE,  # refreshed 5 minutes ago by its clock, equal to ours
    -20 * MINUTE,  # its clock 20 minutes ahead: the lock only looks younger
])
def test_a_backup_on_a_machine_whose_clock_differs_by_minutes_keeps_forget_away(tmp_path, age):
    repository, backend = two_snapshots(tmp_path)
    foreign_lock(backend, age=age)
    packs = pack_count(backend)
    with pytest.raises(RepositoryLockedError, match="in use by a backup or check on elsewhere"):
        prune.run_forget(repository, Retention(last=1))
    assert pack_count(backend) == packs and len(repository.snapshot_ids()) == 2


def test_a_lock_older_than_stale_seconds_by_our_clock_is_ignored(tmp_path):
    repository, backend = two_snapshots(tmp_path)
    foreign_lock(backend, age=STALE_SECONDS + MINUTE)
    result = prune.run_forget(repository, Retention(last=1))
    assert result.removed_snapshots == 1
    assert "locks/elsewhere-4242-00000000" in backend.objects  # judged by age: ignored, never removed


def test_the_lease_leaves_half_of_stale_seconds_to_clocks():
    assert locks.REFRESH_SECONDS < LEASE_SECONDS <= STALE_SECONDS / 2


def options(source: Path) -> BackupOptions:
    return BackupOptions((source,), (), "laptop")


def test_a_backup_whose_lock_went_unrefreshed_saves_no_snapshot(tmp_path, clock):
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    source = make_tree(tmp_path / "src", {"a.txt": "content " * 1000, "b/c.txt": "more"})
    with locked(repository, exclusive=False) as lease:
        repository.load_index()
        clock.advance(LEASE_SECONDS + 1)  # asleep, or cut off: no refresh got through
        with pytest.raises(LockExpiredError, match="went 15 minutes without a refresh"):
            run_backup(repository, options(source), lease=lease)
    assert repository.snapshot_ids() == []
    check = run_check(repository, read_data=True)
    assert check.sound, check.problems
    with locked(repository, exclusive=False) as lease:  # the next attempt, with a fresh lease, saves it
        repository.load_index()
        assert run_backup(repository, options(source), lease=lease).snapshot is not None


def test_a_backup_within_its_lease_saves_its_snapshot(tmp_path, clock):
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    source = make_tree(tmp_path / "src", {"a.txt": "content"})
    with locked(repository, exclusive=False) as lease:
        repository.load_index()
        clock.advance(LEASE_SECONDS - 1)
        assert run_backup(repository, options(source), lease=lease).snapshot is not None


@pytest.mark.parametrize("data_removed", [False, True])
def test_a_gap_while_the_snapshot_was_uploaded_is_checked_after(tmp_path, clock, monkeypatch, data_removed):
    """The upload of the snapshot itself outlasted the lease: it stays if all it needs is there,
    and is taken back if a `forget` that took the lock for stale removed some of it meanwhile."""
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    source = make_tree(tmp_path / "src", {"a.txt": "content " * 1000})
    save = repository.save_snapshot

    def slow_save(snapshot):
        clock.advance(LEASE_SECONDS + 1)
        if data_removed:
            for key in [key for key in repository.backend.objects if key.startswith("packs/")]:
                repository.backend.delete(key)
        save(snapshot)

    monkeypatch.setattr(repository, "save_snapshot", slow_save)
    with locked(repository, exclusive=False) as lease:
        repository.load_index()
        if data_removed:
            with pytest.raises(Exception, match="a forget removed data this backup relies on"):
                run_backup(repository, options(source), lease=lease)
            assert repository.snapshot_ids() == []
        else:
            assert run_backup(repository, options(source), lease=lease).snapshot is not None
            assert len(repository.snapshot_ids()) == 1
    check = run_check(repository, read_data=True)
    assert check.sound, check.problems


def test_a_forget_whose_lock_went_unrefreshed_deletes_nothing_more(tmp_path, clock, monkeypatch):
    repository, backend = two_snapshots(tmp_path)
    packs = {key for key in backend.objects if key.startswith("packs/")}
    indexes = {key for key in backend.objects if key.startswith("index/")}
    repack = prune._repack

    def stalled(*args, **kwargs):  # the fault: a long gap between planning and deleting
        written = repack(*args, **kwargs)
        clock.advance(LEASE_SECONDS + 1)
        return written

    monkeypatch.setattr(prune, "_repack", stalled)
    with pytest.raises(LockExpiredError):
        prune.run_forget(repository, Retention(last=1))
    assert packs <= {key for key in backend.objects if key.startswith("packs/")}
    assert indexes <= {key for key in backend.objects if key.startswith("index/")}
    assert not [key for key in backend.objects if key.startswith("locks/")]
    fresh = open_repository(backend, tmp_path / "state2")
    check = run_check(fresh, read_data=True)
    assert check.sound, check.problems
    monkeypatch.setattr(prune, "_repack", repack)
    result = prune.run_forget(fresh, Retention(last=1))  # the next one, with a lease of its own, finishes
    assert result.deleted_packs + result.repacked_packs >= 1
    check = run_check(fresh, read_data=True)
    assert check.sound, check.problems


def test_the_refresh_thread_keeps_the_lease(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(locks, "REFRESH_SECONDS", 0.01)
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    with locked(repository, exclusive=False) as lease:
        clock.advance(LEASE_SECONDS - 1)
        deadline = time.monotonic() + 10
        while lease.gap() > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        clock.advance(LEASE_SECONDS - 1)
        while lease.written != clock.now and time.monotonic() < deadline:
            time.sleep(0.01)
        lease.confirm()  # two waits of nearly a lease each, bridged by refreshes: never expired


def blob_rows(repository: Repository) -> dict[str, int]:
    """How many packs hold each blob, by the index as stored."""
    repository.load_index()
    rows: dict[str, int] = {}
    for entries in repository.pack_blobs.values():
        for entry in entries:
            rows[entry.id] = rows.get(entry.id, 0) + 1
    return rows


def test_forget_keeps_one_copy_of_what_hosts_uploaded_at_the_same_time(tmp_path):
    """Two hosts start from the same index and back up the same new files: both upload them. The
    next `forget` keeps one copy and every snapshot still restores."""
    backend = MemoryBackend()
    shared = {"shared/big.bin": bytes(range(256)) * 4000, "shared/note.txt": "the same on every machine"}
    hosts = []
    for name in ("a", "b"):
        source = make_tree(tmp_path / name, {**shared, f"own/{name}.txt": f"only on {name}"})
        hosts.append((open_repository(backend, tmp_path / f"state-{name}"), source, name))
    for repository, _, _ in hosts:
        repository.load_index()  # both before either has saved anything
    for repository, source, name in hosts:
        backup(repository, source, host=name)
    checker = open_repository(backend, tmp_path / "state-checker")
    assert max(blob_rows(checker).values()) == 2  # each host stored the shared content
    result = prune.run_forget(checker, Retention())
    assert result.removed_snapshots == 0 and result.repacked_packs + result.deleted_packs >= 1
    assert set(blob_rows(checker).values()) == {1}
    check = run_check(open_repository(backend, tmp_path / "fresh"), read_data=True)
    assert check.sound and check.snapshots == 2, check.problems
