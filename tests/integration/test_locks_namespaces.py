"""Locks held in another PID namespace (a container with the same host name), in real namespaces.

A holder runs under `unshare --pid --fork --mount-proc`: its pid means nothing outside, where the
same number may be free (a live holder that looks dead) or taken (pid 1: a dead holder that looks
alive). `forget` must refuse while the holder lives and go ahead at once after it was killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.sftp import SshServer
from tests.helpers import make_tree
from watcher.cli import main

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"),
]

# Takes a shared (backup) lock the way `watcher backup` does, says so, and holds it.
HOLDER = """
import os, time
from watcher.config import load_settings
from watcher.locks import locked
from watcher.runs import open_repository
repository = open_repository(load_settings(os.environ))
with locked(repository, exclusive=False):
    print("holding", flush=True)
    time.sleep(600)
"""


def free_pid() -> int:
    """A pid no process has here: the holder gets it inside its namespace, so here it looks dead."""
    for pid in range(31000, 20000, -7):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid")


class Holder:
    """A lock holder in a new PID namespace; `as_pid_one` makes it the namespace's init."""

    def __init__(self, env: dict[str, str], *, as_pid_one: bool) -> None:
        python = f"{sys.executable} -c '{HOLDER}'"
        # Else the shell is pid 1 and forks the holder with the pid after ns_last_pid.
        pick = f"echo {free_pid() - 1} > /proc/sys/kernel/ns_last_pid && "
        script = f"exec {python}" if as_pid_one else pick + python
        self.process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script],
            env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).parents[2])},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line == "holding\n", self.process.stderr.read() if self.process.stderr else line

    def init_pid(self) -> int:
        """The outer pid of the namespace's pid 1 (the child of `unshare`)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1
        return int(children[0])

    def kill_namespace(self) -> None:
        """kill -9 the namespace's init: the kernel kills everything in it."""
        os.kill(self.init_pid(), signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill_namespace()  # unshare itself ignores SIGTERM while it waits for its child
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(params=["file", "sftp"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "file":
        return {"BACKUP_TARGET": f"file://{tmp_path / 'repository'}"}
    server: SshServer = request.getfixturevalue("sshd_server")
    return {
        "BACKUP_TARGET": f"sftp://{server.user}@{server.host}:{server.port}{server.scratch('locks')}",
        "BACKUP_TARGET_PASSWORD": server.password,
        "BACKUP_ENCRYPTION": "none",
        "BACKUP_SSH_KNOWN_HOSTS": str(server.known_hosts),
    }


@pytest.fixture
def history(target: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[dict[str, str]]:
    """A repository with two snapshots, of which `BACKUP_KEEP_LAST=1` forgets the first."""
    source = make_tree(tmp_path / "src", {"a.bin": os.urandom(300_000), "b.txt": "stays"})
    env = {**target, "BACKUP_SOURCES": str(source), "BACKUP_STATE_DIR": str(tmp_path / "state")}
    assert main(["backup"], env) == 0
    (source / "a.bin").write_bytes(os.urandom(300_000))
    assert main(["backup"], env) == 0
    capsys.readouterr()
    yield env


def repository_keys(env: dict[str, str]) -> list[str]:
    from watcher.config import load_settings
    from watcher.runs import open_repository

    repository = open_repository(load_settings(env))
    try:
        return [info.key for info in repository.backend.list() if not info.key.startswith("locks/")]
    finally:
        repository.close()


@pytest.mark.parametrize("state", ["shared", "own"], ids=["same-state-folder", "other-state-folder"])
def test_forget_refuses_while_a_backup_in_another_pid_namespace_holds_the_lock(history, state, tmp_path, capsys):
    holder = Holder(history, as_pid_one=False)
    try:
        before = repository_keys(history)
        env = {**history, "BACKUP_KEEP_LAST": "1"}
        if state == "own":  # `docker compose run ... forget`: another container, its own state volume
            env["BACKUP_STATE_DIR"] = str(tmp_path / "forget-state")
        code = main(["forget"], env)
        err = capsys.readouterr().err
        assert code == 1, err
        assert "in use by a backup or check" in err
        assert repository_keys(history) == before  # nothing deleted
    finally:
        holder.stop()


def test_a_dead_pid_one_holder_is_stale_at_once(history, capsys):
    holder = Holder(history, as_pid_one=True)
    try:
        holder.kill_namespace()
    finally:
        holder.stop()
    started = time.monotonic()
    code = main(["forget"], {**history, "BACKUP_KEEP_LAST": "1"})
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "removed 1 snapshots" in out
    assert time.monotonic() - started < 60
    assert main(["check"], history) == 0
