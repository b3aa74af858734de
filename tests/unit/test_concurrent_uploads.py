"""Packs uploaded by several threads at once where the backend takes it (`concurrent_puts`: S3's
requests, a local folder's files), one at a time under the repository's lock where it does not
(one SFTP or FTP connection). The backend is a real local folder that records how many pack
uploads overlap; each upload waits a little first, so that the scan is always ahead of them."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.helpers import backup, describe_tree, make_tree
from watcher import repository as repository_module
from watcher.actions.check import run_check
from watcher.actions.restore import run_restore
from watcher.backends.local import LocalBackend
from watcher.errors import PermissionDeniedError
from watcher.repository import Repository
from watcher.retry import RetryingBackend

pytestmark = pytest.mark.timeout(120)


class OverlapRecorder:
    """How many pack uploads run at once, at most; the upload numbered `fail_at` is refused."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.active = 0
        self.most = 0
        self.started = 0
        self.fail_at: int | None = None

    def around(self, key: str, upload) -> None:
        if not key.startswith("packs/"):
            upload()
            return
        with self.guard:
            self.active += 1
            self.most = max(self.most, self.active)
            self.started += 1
            number = self.started
        try:
            time.sleep(0.05)  # long enough for the scan to seal and hand over the next pack meanwhile
            if number == self.fail_at:
                raise PermissionDeniedError(f"{key}: refused, as the test asked")
            upload()
        finally:
            with self.guard:
                self.active -= 1


class RecordingBackend(LocalBackend):
    def __init__(self, root: Path, concurrent_puts: int, recorder: OverlapRecorder) -> None:
        super().__init__(root)
        self.concurrent_puts = concurrent_puts
        self.recorder = recorder

    def put(self, key: str, source: BinaryIO) -> None:
        self.recorder.around(key, lambda: super(RecordingBackend, self).put(key, source))


def _repository(tmp_path: Path, concurrent_puts: int, recorder: OverlapRecorder) -> Repository:
    """As a run opens it: the backend inside the retrying wrapper, which must pass its figure on."""
    backend = RetryingBackend(RecordingBackend(tmp_path / "repo", concurrent_puts, recorder))
    assert backend.concurrent_puts == concurrent_puts
    repository = Repository(backend, None)
    repository.backend.open()
    repository.open(create=True, pack_size=500_000)  # about one file a pack: many packs
    repository.load_index()
    return repository


def _upload_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("pack-upload")]


@pytest.mark.parametrize("concurrent_puts", [1, 2, 3])
def test_packs_upload_as_many_at_once_as_the_backend_takes(tmp_path, concurrent_puts):
    source = make_tree(tmp_path / "src", {f"d{i % 3}/f{i}.bin": os.urandom(600_000) for i in range(16)})
    recorder = OverlapRecorder()
    repository = _repository(tmp_path, concurrent_puts, recorder)
    result = backup(repository, source)
    assert recorder.started >= 16
    assert recorder.most == concurrent_puts
    assert result.summary.bytes_added >= 16 * 600_000  # every pack counted once, none lost between threads
    assert not _upload_threads()
    # every pack uploaded is indexed, and the repository is whole
    stored = {info.key.rsplit("/", 1)[1] for info in repository.backend.list("packs")}
    assert stored == set(repository.packs)
    assert run_check(repository, read_data=True).problems == []
    out = tmp_path / "out"
    assert result.snapshot is not None
    run_restore(repository, result.snapshot, out)
    assert describe_tree(out / str(source).lstrip("/")) == describe_tree(source)


def test_a_refused_upload_ends_the_backup_and_the_next_one_completes(tmp_path):
    """One thread's failure stops the others' work, reaches the caller as the error it was, and
    leaves no thread behind; what was uploaded and indexed meanwhile is reused by the next run."""
    source = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(600_000) for i in range(60)})
    recorder = OverlapRecorder()
    recorder.fail_at = 12
    repository = _repository(tmp_path, 3, recorder)
    with pytest.raises(PermissionDeniedError, match="refused, as the test asked"):
        backup(repository, source)
    assert not _upload_threads()
    assert recorder.started <= 12 + 2  # no upload started after the failure but the two in flight
    recorder.fail_at = None
    result = backup(repository, source)
    assert result.snapshot is not None
    assert run_check(repository, read_data=True).problems == []
    run_restore(repository, result.snapshot, tmp_path / "out")
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)


def test_an_upload_that_ends_after_abort_is_indexed_by_nothing(tmp_path, monkeypatch):
    """A stopping run aborts its writer and gives its uploads 5 s; one that ends later (a slow link,
    a retry's back-off) must not write an index: the run's lock may be gone by then, and a `forget`
    elsewhere may already have removed what was not indexed, so such an index would name lost packs."""
    release = threading.Event()
    recorder = OverlapRecorder()
    repository = _repository(tmp_path, 3, recorder)
    indexes_before = {info.key for info in repository.backend.list("index")}
    original = recorder.around

    holding = threading.Semaphore(0)

    def held(key: str, upload) -> None:
        holding.release()
        release.wait(30)
        original(key, upload)

    recorder.around = held  # type: ignore[method-assign]
    monkeypatch.setattr(repository_module, "INDEX_EVERY_PACKS", 1)  # each upload would write an index
    writer = repository.writer()
    writer.pack_size = 1  # every blob seals a pack: three packs, one in each upload thread
    for _ in range(3):
        data = os.urandom(1000)
        writer.add(repository.codec.blob_id(data), "data", data)
    for _ in range(3):
        assert holding.acquire(timeout=30)  # each pack is in its upload, held
    writer.abort()  # the uploads are held: it gives up on them after 5 s
    release.set()
    for thread in writer.threads:
        thread.join(timeout=30)
    assert not _upload_threads()
    assert {info.key for info in repository.backend.list("index")} == indexes_before
    assert writer.index_ids == set() and writer.uploaded == []
