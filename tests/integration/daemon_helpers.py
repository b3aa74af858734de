"""Running `watcher run` as a real process in tests, and reading what it committed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


class DaemonProcess:
    """`watcher run` in a subprocess, with its output in a file the test can read."""

    def __init__(self, env: dict[str, str], log: Path, command: list[str] | None = None) -> None:
        self.env = env
        self.log = log
        self.command = command or [sys.executable, "-m", "watcher", "run"]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        handle = open(self.log, "ab")  # noqa: SIM115 (kept open by the child)
        self.process = subprocess.Popen(self.command, env=self.env, stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 60, count: int = 1) -> None:
        wait_until(lambda: self.output().count(text) >= count, timeout, f"{text!r} in the daemon's output")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def watcher_json(env: dict[str, str], *args: str) -> list[dict[str, object]]:
    """The list that `snapshots --json` or `ls --json` prints."""
    done = subprocess.run([sys.executable, "-m", "watcher", *args, "--json"], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def snapshot_paths(env: dict[str, str], snapshot: str = "latest") -> set[str]:
    return {entry["path"] for entry in watcher_json(env, "ls", snapshot)}  # type: ignore[misc]


def daemon_env(source: Path, tmp_path: Path, target: str | None = None, **extra: str) -> dict[str, str]:
    return {**os.environ, "BACKUP_SOURCES": str(source), "BACKUP_ENCRYPTION": "none", "BACKUP_TARGET": target or f"file://{tmp_path}/repo",
            "BACKUP_STATE_DIR": str(tmp_path / "state"), "BACKUP_DEBOUNCE_SECONDS": "0.5",
            "BACKUP_MAX_DELAY_SECONDS": "5", **extra}
