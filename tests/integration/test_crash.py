"""A backup killed with SIGKILL at several moments leaves a sound repository, and the next
backup completes, reuses what was uploaded, and restores byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import describe_tree, make_tree
from watcher.backends.local import LocalBackend
from watcher.repository import Repository

PACK_SIZE = 512 * 1024


def watcher(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    files: dict[str, bytes | str] = {f"small/{i:04d}.txt": os.urandom(2000) for i in range(400)}
    files.update({f"large/{i}.bin": os.urandom(6 * 1024 * 1024) for i in range(5)})
    return make_tree(tmp_path / "src", files)


def _wait_for(predicate, limit: float = 30) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return False


def _count(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file() and not path.name.startswith(".")) \
        if folder.exists() else 0


MOMENTS = {
    "right after start": lambda repo: True,
    "after the first pack": lambda repo: _count(repo / "packs") >= 1,
    "after the first index": lambda repo: _count(repo / "index") >= 1,
    "after many packs": lambda repo: _count(repo / "packs") >= 40,
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_kill_9_during_backup(tmp_path: Path, source: Path, moment: str) -> None:
    repo = tmp_path / "repo"
    backend = LocalBackend(repo)
    backend.open()
    Repository(backend, None).open(create=True, pack_size=PACK_SIZE)  # small packs: many commit points
    env = {**os.environ, "BACKUP_SOURCES": str(source), "BACKUP_TARGET": f"file://{repo}",
           "BACKUP_STATE_DIR": str(tmp_path / "state")}
    process = subprocess.Popen([sys.executable, "-m", "watcher", "backup"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: MOMENTS[moment](repo) or process.poll() is not None)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    check = watcher(env, "check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr
    listed = json.loads(watcher(env, "snapshots", "--json").stdout)
    assert len(listed) <= 1  # the killed run committed all of its snapshot, or none of it
    total = sum(path.stat().st_size for path in source.rglob("*") if path.is_file())
    finished = watcher(env, "backup")
    assert finished.returncode == 0, finished.stderr
    after = json.loads(watcher(env, "snapshots", "--json").stdout)
    if moment in ("after the first index", "after many packs") and not listed:
        assert after[-1]["bytes_added"] < total  # indexed packs of the killed run are reused
    assert watcher(env, "check", "--read-data").returncode == 0
    restore = watcher(env, "restore", "latest", "--to", str(tmp_path / "out"))
    assert restore.returncode == 0, restore.stdout + restore.stderr
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)
