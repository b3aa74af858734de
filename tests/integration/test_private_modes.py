"""Item 6 of issue 12: what watcher creates (a file:// repository, the state folder, its cache,
logs, health and pending files) only its owner can read, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.fixtures.smtp import SmtpServer
from tests.helpers import make_tree
from tests.integration.daemon_helpers import DaemonProcess, daemon_env
from watcher.cache import LocalCache
from watcher.cli import main

pytestmark = pytest.mark.timeout(120)


def modes_below(root: Path) -> dict[str, int]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


@pytest.fixture
def umask(request: pytest.FixtureRequest):
    old = os.umask(request.param)  # process-wide: the daemon started below inherits it too
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o000], indirect=True, ids=["umask-022", "umask-000"])
def test_everything_watcher_creates_is_private(tmp_path: Path, smtp_server: SmtpServer, umask: int):
    source = make_tree(tmp_path / "src", {"a.txt": "alpha", "sub/b.txt": "beta"})
    made = tmp_path / "made"  # everything below is watcher's
    env = {**daemon_env(source, made, target=f"file://{made}/new/repo"), **smtp_server.environment(),
           "MAIL_ON": "always"}
    assert main(["backup"], env) == 0
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        daemon.wait_for_output("report mail sent")
        (source / "c.txt").write_text("a change, so that pending changes are saved")
        daemon.wait_for_output("report mail sent", count=2)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    cache = LocalCache(made / "state" / "repos" / "extra" / "cache.db")
    cache.put_snapshot("x", b"{}")  # the -wal and -shm files exist while a connection is open
    try:
        found = modes_below(made)
    finally:
        cache.close()
    names = {Path(name).name for name in found}
    assert {"repo", "config", "state", "logs", "health.json", "mail.json", "pending.json", "cache.db",
            "cache.db-wal", "cache.db-shm"} <= names, sorted(found)
    assert any(name.startswith("snapshots/") or "/snapshots/" in name for name in found)
    public = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert public == {}


@pytest.mark.parametrize("umask", [0o022], indirect=True, ids=["umask-022"])
def test_a_target_folder_the_user_made_keeps_its_modes(tmp_path: Path, umask: int):
    source = make_tree(tmp_path / "src", {"a.txt": "alpha"})
    mine = tmp_path / "mine"
    mine.mkdir()
    mine.chmod(0o755)
    env = daemon_env(source, tmp_path, target=f"file://{mine}")
    assert main(["backup"], env) == 0
    assert stat.S_IMODE(mine.stat().st_mode) == 0o755
    found = modes_below(mine)
    assert "config" in found
    assert {name: oct(mode) for name, mode in found.items() if mode & 0o077} == {}
