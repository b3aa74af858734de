"""A `forget` that did not respect a running backup's lock (a clock far ahead, a lock removed by
hand) and removed the packs the backup had just uploaded: the backup must not save a snapshot
naming them. It fails that run (transient), the next run uploads again, and all restores.

The forget is injected at exact instants of the backup, on a file:// and a real SFTP target.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import backup, describe_tree, make_tree, open_repository
from watcher import locks
from watcher.actions import prune
from watcher.actions.check import run_check
from watcher.actions.restore import run_restore
from watcher.backends.base import Backend
from watcher.backends.local import LocalBackend
from watcher.config import Retention
from watcher.errors import RepositoryError, is_transient
from watcher.repository import BlobWriter

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["file", "sftp"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return LocalBackend(tmp_path / "repository")
    return request.getfixturevalue("sftp_backend")


def forget_ignoring_locks(backend: Backend, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another host's `forget` that takes the running backup's lock for stale (its own lease intact)."""
    lease = locks.Lease(lambda: None)
    lease.stamp(locks.lease_clock())
    with monkeypatch.context() as patch:
        patch.setattr(prune, "locked", lambda repository, exclusive: contextlib.nullcontext(lease))
        result = prune.run_forget(open_repository(backend, state), Retention(last=1))
    assert result.deleted_packs + result.repacked_packs >= 1  # it did remove what the backup uploaded


def inject_once(monkeypatch: pytest.MonkeyPatch, method: str, when: str, action: Callable[[], None]) -> None:
    """Run `action` once, before or after the first call of BlobWriter.<method> made by the backup."""
    original = getattr(BlobWriter, method)
    done: list[bool] = []

    def wrapper(self: BlobWriter, *args: object) -> object:
        if done:
            return original(self, *args)
        done.append(True)
        if when == "before":
            action()
            return original(self, *args)
        outcome = original(self, *args)
        action()
        return outcome

    monkeypatch.setattr(BlobWriter, method, wrapper)


@pytest.mark.parametrize(("method", "when"), [("finish", "after"), ("_write_index", "before")],
                         ids=["forget-after-the-last-index", "forget-before-the-index"])
def test_a_backup_never_saves_a_snapshot_naming_packs_a_forget_removed(target, method, when, tmp_path, monkeypatch):
    """`_write_index` before: the one-pack index `forget` writes again is byte for byte the old one,
    so no index vanishes from the listing; only the backup's own packs tell."""
    source = make_tree(tmp_path / "src", {"a.txt": "first", "big.bin": os.urandom(400_000)})
    repository = open_repository(target, tmp_path / "state")
    backup(repository, source)
    (source / "new.bin").write_bytes(os.urandom(300_000))
    inject_once(monkeypatch, method, when, lambda: forget_ignoring_locks(target, tmp_path / "other", monkeypatch))
    with pytest.raises(RepositoryError, match="forget removed") as raised:
        backup(repository, source)
    assert is_transient(raised.value)
    monkeypatch.undo()
    assert len(repository.snapshot_ids()) == 1
    assert run_check(open_repository(target, tmp_path / "fresh1"), read_data=True).sound
    repository.load_index()  # what the next attempt does first, under its lock
    assert backup(repository, source).snapshot is not None
    fresh = open_repository(target, tmp_path / "fresh2")
    check = run_check(fresh, read_data=True)
    assert check.sound, check.problems
    run_restore(fresh, fresh.find_snapshot("latest"), tmp_path / "out")
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)
