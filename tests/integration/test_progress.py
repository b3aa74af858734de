"""Progress bars appear on a terminal and nowhere else."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tests.helpers import make_tree


def _run(env: dict[str, str], *args: str, terminal: bool) -> str:
    """Run the CLI with stderr on a pseudo-terminal (or a pipe); return what stderr showed."""
    if not terminal:
        done = subprocess.run([sys.executable, "-m", "watcher", *args], env=env, capture_output=True, text=True,
                              timeout=120, check=True)
        return done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real terminal's size
    process = subprocess.Popen([sys.executable, "-m", "watcher", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        shown += data
    os.close(leader)
    assert process.wait(timeout=120) == 0
    return shown.decode(errors="replace")


def test_backup_and_restore_show_progress_only_on_a_terminal(tmp_path: Path) -> None:
    source = make_tree(tmp_path / "src", {f"f{i}": os.urandom(200_000) for i in range(20)})
    env = {**os.environ, "BACKUP_SOURCES": str(source), "BACKUP_TARGET": f"file://{tmp_path}/repo",
           "BACKUP_STATE_DIR": str(tmp_path / "state")}
    assert "read" in _run(env, "backup", terminal=True)
    (source / "new").write_bytes(os.urandom(1000))
    assert _run(env, "backup", terminal=False) == ""
    assert "restore" in _run(env, "restore", "latest", "--to", str(tmp_path / "a"), terminal=True)
    assert _run(env, "restore", "latest", "--to", str(tmp_path / "b"), terminal=False) == ""
