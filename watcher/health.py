"""The daemon's health status, a small JSON file in the state folder that `watcher health` reads.

Healthy means: the daemon's process is alive and, for every target, its last run succeeded and
a run succeeded within the allowed age (a run that found nothing to change counts). A daemon
still doing its first run is healthy until that age has passed. So a container whose backups
silently stopped, to any one target, turns unhealthy, and the reason names that target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
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
    targets: dict[str, dict[str, str | bool | None]] = field(default_factory=dict)  # label -> its last_* fields


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

    def started(self, targets: Iterable[str] = ()) -> None:
        """A new daemon for `targets` (their labels): each keeps the last success it had."""
        previous = self.read()
        before = previous.targets if previous else {}
        self.state = HealthState(pid=os.getpid(), started=_now().isoformat(),
                                 last_success=previous.last_success if previous else None,
                                 targets={label: {"last_success": before.get(label, {}).get("last_success")}
                                          for label in targets})
        self._write()

    def run_finished(self, ok: bool, error: str | None = None, target: str | None = None) -> None:
        """The outcome of one run to `target` (its label); the top-level fields hold the latest of any."""
        assert self.state is not None
        now = _now().isoformat()
        self.state.last_run_finished, self.state.last_run_ok, self.state.last_error = now, ok, error
        if ok:
            self.state.last_success = now
        if target is not None:
            entry = self.state.targets.setdefault(target, {})
            entry.update(last_run_ok=ok, last_error=error)
            if ok:
                entry["last_success"] = now
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
    if not state.targets:  # a status written before several targets: one, unnamed
        return _target_verdict("", state.last_run_ok, state.last_error, state.last_success, state.started, now,
                               max_age_seconds, state.pid)
    first: tuple[bool, str] | None = None
    for label, entry in state.targets.items():
        healthy, reason = _target_verdict(f"{label}: ", entry.get("last_run_ok"), entry.get("last_error"),
                                          entry.get("last_success"), state.started, now, max_age_seconds, state.pid)
        if not healthy:
            return healthy, reason
        first = first or (healthy, reason)
    assert first is not None
    return first


def _target_verdict(name: str, ok: object, error: object, success: object, started: str, now: datetime,
                    max_age_seconds: float, pid: int) -> tuple[bool, str]:
    if ok is False:
        return False, f"{name}the last run failed: {error}"
    reference = str(success or started)
    age = (now - datetime.fromisoformat(reference)).total_seconds()
    if age > max_age_seconds:
        what = "no run has succeeded" if success else "the first run has not finished"
        return False, f"{name}{what} for {age:.0f} s (limit BACKUP_HEALTH_MAX_AGE_SECONDS={max_age_seconds:.0f})"
    if success is None:
        return True, f"healthy: {name}first run under way (pid {pid})"
    return True, f"healthy: {name}last successful run {age:.0f} s ago (pid {pid})"
