"""`forget` and left-over temporary upload files: only old ones, and a daemon looks rarely."""

from __future__ import annotations

import time

from tests.helpers import open_repository
from watcher.actions import prune
from watcher.backends.base import temp_name
from watcher.backends.memory import MemoryBackend
from watcher.config import Retention


def test_a_daemon_looks_for_left_over_uploads_at_most_every_few_hours(tmp_path):
    backend = MemoryBackend()
    repository = open_repository(backend, tmp_path / "state")
    first, second = temp_name("packs/00/a"), temp_name("packs/00/b")
    backend.stray[first] = (b"x", time.time() - 2 * prune.TEMPORARY_SAFE_SECONDS)
    assert prune.run_forget(repository, Retention(last=1)).removed_temporaries == 1
    backend.stray[second] = (b"x", time.time() - 2 * prune.TEMPORARY_SAFE_SECONDS)
    assert prune.run_forget(repository, Retention(last=1)).removed_temporaries == 0  # looked just now
    repository.temporaries_swept = time.monotonic() - prune.TEMPORARY_SWEEP_SECONDS - 1  # hours later
    assert prune.run_forget(repository, Retention(last=1)).removed_temporaries == 1
    assert backend.stray == {}


def test_a_left_over_of_unknown_or_recent_time_stays(tmp_path):
    backend = MemoryBackend()
    repository = open_repository(backend, tmp_path / "state")
    recent, unknown = temp_name("index/a"), temp_name("index/b")
    backend.stray[recent] = (b"x", time.time() - prune.TEMPORARY_SAFE_SECONDS + 60)
    backend.stray[unknown] = (b"x", None)  # a server that does not say
    assert prune.run_forget(repository, Retention(last=1)).removed_temporaries == 0
    assert set(backend.stray) == {recent, unknown}
