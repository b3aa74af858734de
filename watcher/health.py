"""The daemon's health status, a small JSON file in the state folder that `watcher health` reads.

Healthy means: the daemon's process is alive, its last run succeeded, and a run succeeded
within the allowed age (a run that found nothing to change counts). A daemon still doing its
first run is healthy until that age has passed. So a container whose backups silently stopped
turns unhealthy.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from watcher.private import StateFile


@dataclass
class HealthState:
    pid: int
    started: str
    last_run_finished: str | None = None
    last_run_ok: bool | None = None
    last_error: str | None = None
    last_success: str | None = None
    stopped: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


class HealthFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "health.json"
        self.file = StateFile(self.path, "health status")
        self.state: HealthState | None = None

    def _write(self) -> None:
        assert self.state is not None
        self.file.write(json.dumps(asdict(self.state), indent=1).encode())

    def started(self) -> None:
        previous = self.read()
        self.state = HealthState(pid=os.getpid(), started=_now().isoformat(),
                                 last_success=previous.last_success if previous else None)
        self._write()

    def run_finished(self, ok: bool, error: str | None = None) -> None:
        assert self.state is not None
        now = _now().isoformat()
        self.state.last_run_finished, self.state.last_run_ok, self.state.last_error = now, ok, error
        if ok:
            self.state.last_success = now
        self._write()

    def stopped(self) -> None:
        if self.state is not None:
            self.state.stopped = True
            self._write()

    def read(self) -> HealthState | None:
        try:
            data = json.loads(self.path.read_text())
            return HealthState(**data)
        except (OSError, ValueError, TypeError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def verdict(state_dir: Path, max_age_seconds: float, now: datetime | None = None) -> tuple[bool, str]:
    """(healthy, the reason in one line)."""
    now = now or _now()
    state = HealthFile(state_dir).read()
    if state is None:
        return False, f"no daemon status in {state_dir} (is `watcher run` running with this BACKUP_STATE_DIR?)"
    if state.stopped or not _alive(state.pid):
        return False, f"the daemon (pid {state.pid}) is not running"
    if state.last_run_ok is False:
        return False, f"the last run failed: {state.last_error}"
    reference = state.last_success or state.started
    age = (now - datetime.fromisoformat(reference)).total_seconds()
    if age > max_age_seconds:
        what = "no run has succeeded" if state.last_success else "the first run has not finished"
        return False, f"{what} for {age:.0f} s (limit BACKUP_HEALTH_MAX_AGE_SECONDS={max_age_seconds:.0f})"
    if state.last_success is None:
        return True, f"healthy: first run under way (pid {state.pid})"
    return True, f"healthy: last successful run {age:.0f} s ago (pid {state.pid})"
