"""Lock documents and holder files: who holds a lock, and what a process does without a state folder."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import backup, make_tree, open_repository
from watcher.actions.check import run_check
from watcher.actions.prune import run_forget
from watcher.backends.local import LocalBackend
from watcher.backends.memory import MemoryBackend
from watcher.config import Retention
from watcher.locks import LockInfo, RepositoryLockedError, locked, this_kernel


def lock_documents(backend: MemoryBackend) -> list[dict]:
    return [json.loads(data) for key, data in backend.objects.items() if key.startswith("locks/")]


def put_lock(backend: MemoryBackend, key: str, **document: object) -> None:
    """A lock as a watcher on this kernel and in this PID namespace writes it, with `document` on top."""
    boot_id, namespace = this_kernel()
    backend.put_bytes(key, json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "exclusive": False,
        "holder": "", "boot_id": boot_id, "pid_namespace": namespace, **document}).encode())


def test_a_lock_names_its_holder_beyond_host_and_pid(tmp_path):
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    with locked(repository, exclusive=False):
        (document,) = lock_documents(repository.backend)
        assert (document["boot_id"], document["pid_namespace"]) == this_kernel()
        assert document["boot_id"] and document["pid_namespace"].startswith("pid:[")
        holder_file = tmp_path / "state" / "locks" / document["holder"]
        assert holder_file.is_file()
    assert not holder_file.exists() and not lock_documents(repository.backend)


def test_a_state_folder_that_cannot_hold_the_file_falls_back(tmp_path, caplog):
    (tmp_path / "state").write_text("a file where the state folder should be")
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    with caplog.at_level(logging.WARNING), locked(repository, exclusive=True):
        (document,) = lock_documents(repository.backend)
        assert document["holder"] == ""
    assert "judge this lock by pid and age only" in caplog.text


def test_a_foreign_holder_id_never_names_a_path(tmp_path):
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    outside = tmp_path / "elsewhere"
    outside.write_text("x")
    boot_id, namespace = this_kernel()
    repository.backend.put_bytes("locks/h-1-aaaa", json.dumps({
        "host": "h", "pid": 1, "time": time.time(), "exclusive": False,
        "holder": "../../elsewhere", "boot_id": boot_id, "pid_namespace": namespace + "x"}).encode())
    with pytest.raises(RepositoryLockedError), locked(repository, exclusive=True):
        pass
    assert outside.read_text() == "x"


@pytest.mark.parametrize("pid", [0, -1, True, "1"])
def test_a_lock_with_a_nonsense_pid_is_ignored_never_probed(tmp_path, pid):
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    boot_id, namespace = this_kernel()
    repository.backend.put_bytes("locks/h-0-aaaa", json.dumps({
        "host": "h", "pid": pid, "time": time.time(), "exclusive": True,
        "boot_id": boot_id, "pid_namespace": namespace}).encode())
    with locked(repository, exclusive=False):
        pass


def test_a_killed_holder_in_this_namespace_is_removed_at_once(tmp_path):
    """Without a state folder (a process with none), the pid decides: same kernel, same namespace."""
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from watcher.backends.local import LocalBackend\n"
            "from watcher.locks import locked\n"
            "from watcher.repository import Repository\n"
            "repository = Repository(LocalBackend(sys.argv[1]), None)\n"
            "with locked(repository, exclusive=True):\n"
            "    print('holding', flush=True)\n"
            "    time.sleep(600)\n"), str(tmp_path / "repository")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
    repository = open_repository(LocalBackend(tmp_path / "repository"), None)
    with pytest.raises(RepositoryLockedError, match="in use by a forget, key"), locked(repository, exclusive=False):
        pass
    holder.kill()
    holder.wait()
    holder.stdout.close()
    with locked(repository, exclusive=False):
        assert len(list(repository.backend.list("locks"))) == 1  # the dead one is gone, ours is there
    assert list(repository.backend.list("locks")) == []


def test_forget_reads_the_index_again_under_its_lock(tmp_path):
    """A backup that finished between `forget` opening the repository and taking its lock: its
    packs are in an index `forget` had not read, and must not be taken for leftovers."""
    source = make_tree(tmp_path / "src", {"a.bin": os.urandom(200_000)})
    backend = MemoryBackend()
    backup(open_repository(backend, tmp_path / "state"), source)
    forgetting = open_repository(backend, tmp_path / "state")  # index read now
    (source / "b.bin").write_bytes(os.urandom(200_000))
    backup(open_repository(backend, tmp_path / "state"), source)  # same host: trees are in the cache
    result = run_forget(forgetting, Retention(last=1))
    assert result.removed_snapshots == 1
    check = run_check(open_repository(backend, tmp_path / "fresh"), read_data=True)
    assert check.sound, check.problems


def test_a_dead_predecessor_with_our_pid_is_removed_at_once(tmp_path, caplog):
    """A restarted container's daemon has its predecessor's pid and host name, and the kernel may give
    its new PID namespace the dead one's number: a lock with our host and pid that we do not hold is
    that predecessor's, though the pid exists (it is ours)."""
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    put_lock(repository.backend, "locks/predecessor", holder="ab" * 16)  # its holder file is not here
    with caplog.at_level(logging.INFO), locked(repository, exclusive=True):
        assert "locks/predecessor" not in repository.backend.objects
        assert len(lock_documents(repository.backend)) == 1  # ours
    assert f"removed the lock of a backup or check on {socket.gethostname()} (pid {os.getpid()})" in caplog.text


@pytest.mark.parametrize("state", ["state", None])
def test_our_own_lock_is_never_judged_dead(tmp_path, state):
    """Without a state folder there is no holder file to judge by: our own pid is all there is."""
    repository = open_repository(MemoryBackend(), tmp_path / state if state else None)
    with locked(repository, exclusive=False):
        ((key, data),) = [(key, data) for key, data in repository.backend.objects.items() if key.startswith("locks/")]
        assert LockInfo(key, **json.loads(data)).alive(repository.state_dir) is True
        with pytest.raises(RepositoryLockedError, match=f"pid {os.getpid()}"), locked(repository, exclusive=True):
            pass
        assert key in repository.backend.objects
    assert not lock_documents(repository.backend)


def test_our_pid_on_another_host_is_not_taken_for_ours(tmp_path):
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    put_lock(repository.backend, "locks/elsewhere", host=socket.gethostname() + "-other")
    with pytest.raises(RepositoryLockedError), locked(repository, exclusive=True):
        pass
    assert "locks/elsewhere" in repository.backend.objects


def test_our_pid_and_host_in_another_namespace_is_not_taken_for_ours(tmp_path):
    """Another container of the same host name (or the same image elsewhere) has its own pid 1 and
    may be alive: nothing here tells, so only the lock's age decides."""
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    put_lock(repository.backend, "locks/sibling", pid_namespace="pid:[1]")
    put_lock(repository.backend, "locks/other-kernel", boot_id="another boot")
    with pytest.raises(RepositoryLockedError), locked(repository, exclusive=True):
        pass
    assert {"locks/sibling", "locks/other-kernel"} <= set(repository.backend.objects)
