"""`watcher run`: a full backup at start, then one run per burst of changes, whatever happens.

One thread (this one) runs backups in series; watchdog's threads only feed the debouncer.
Each burst of changes feeds every target, backed up in turn. Each target has its own state:
its open repository, its pending changes, its back-off. An attempt that fails with an error
that may pass is tried again with exponential back-off and jitter, up to BACKUP_RETRIES
attempts; then the failure is reported once and the daemon keeps trying at the capped
interval, so that when the target comes back every change made meanwhile is in its next
snapshot. A back-off is a time to try again, never a sleep: the other targets get their
snapshots on time meanwhile. Pending changes are saved in the state folder, one file per
target (and the start-up run is a full scan anyway), so a restart or a crash loses none.
SIGTERM or SIGINT stops it promptly, with no half snapshot visible.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from watcher.config import Settings, Target
from watcher.errors import (
    BackendError,
    ConfigError,
    InterruptedRunError,
    PermanentError,
    TransientError,
    UnexpectedError,
    WatcherError,
)
from watcher.health import HealthFile
from watcher.logs import log_traceback
from watcher.notify import utc_now
from watcher.private import StateFile
from watcher.repository import Repository
from watcher.runs import (
    TargetOutcome,
    backup_into,
    finish_run,
    log_outcome,
    never_back_up,
    open_repository,
    operation_policy,
    start_run_log,
)
from watcher.scan import Excluder
from watcher.watch import Batch, Debouncer, SourceWatcher

log = logging.getLogger("watcher.daemon")

TICK_SECONDS = 1.0


def worth_retrying(error: BaseException) -> bool:
    """Transient errors, and backend errors no table knows (a gap, maybe passing); never permanent ones."""
    if isinstance(error, PermanentError):
        return False
    return isinstance(error, TransientError) or type(error) is BackendError


class PendingStore:
    """The changes not yet in a snapshot, saved so that a restart does not forget them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = StateFile(path, "pending changes")
        self.saved: tuple[bool, frozenset[str]] | None = None

    def save(self, batch: Batch) -> None:
        key = (batch.full, frozenset(batch.paths))
        if key == self.saved:
            return
        if self.file.write(json.dumps({"full": batch.full, "paths": sorted(batch.paths)}).encode()):
            self.saved = key

    def load(self) -> Batch:
        try:
            data = json.loads(self.path.read_text())
            return Batch(set(data.get("paths", ())), bool(data.get("full")), ["changes pending before a restart"])
        except (OSError, ValueError, TypeError, AttributeError):
            return Batch()


def pending_path(state_dir: Path, target: Target) -> Path:
    """The first target's file keeps the name it had before several targets, so it is still read."""
    return state_dir / ("pending.json" if target.number == 1 else f"pending-{target.number}.json")


class TargetState:
    """One target's part of the daemon: its repository (kept open between runs: a triggered run
    costs little), the changes not yet in a snapshot there, and its own back-off."""

    def __init__(self, target: Target, state_dir: Path) -> None:
        self.target = target
        self.label = target.label()
        self.repository: Repository | None = None
        self.store = PendingStore(pending_path(state_dir, target))
        self.pending = self.store.load()
        self.failures = 0  # failed attempts since its last success
        self.retry_at: float | None = None
        self.next_rescan: float | None = None
        self.outage_reported = False
        self.last_error: WatcherError | None = None
        self.last_run_end = 0.0  # when its last attempt ended: an idle target is tried again for `health`

    def close(self) -> None:
        if self.repository is not None:
            self.repository.close()
            self.repository = None

    def ready(self, now: float) -> bool:
        return self.retry_at is None or now >= self.retry_at


class Daemon:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = threading.Event()
        self.debouncer = Debouncer(settings.debounce_seconds, settings.max_delay_seconds, clock)
        excluder = Excluder(settings.exclude, never_back_up(settings))
        poll = max(1.0, min(settings.debounce_seconds, 10.0))
        self.watcher = SourceWatcher(settings.sources, excluder, settings.watch_mode, self.debouncer, poll)
        self.targets = [TargetState(target, settings.state_dir) for target in settings.targets]
        # With several targets, a server that is gone fails its attempt at once (the daemon's back-off
        # takes over) rather than hold up the others; one target alone keeps the patient operation retries.
        self.connect_policy = operation_policy(settings, connect_once=len(self.targets) > 1)
        self.health = HealthFile(settings.state_dir)
        self.starting = False
        for state in self.targets:
            state.last_run_end = clock()

    # -- life cycle ----------------------------------------------------------------------------

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        if not self.stop.is_set():
            log.info("stopping (%s)", signal.Signals(signum).name if signum else "requested")
        self.stop.set()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        self.health.started(state.label for state in self.targets)
        log.info("watcher daemon started: %s -> %s", ", ".join(map(str, self.settings.sources)),
                 ", ".join(state.label for state in self.targets))
        self.watcher.start()
        try:
            for state in self.targets:
                state.pending.merge(Batch(full=True, reasons=["start-up"]))
            self.starting = True  # a configuration error found now ends the daemon (exit 2)
            self.run_pass(self.targets)
            self.starting = False
            while not self.stop.is_set():
                self.stop.wait(self.seconds_to_next())
                if self.stop.is_set():
                    break
                self.watcher.check()
                self.save_pending()
                due = self.due_targets()
                if due:
                    self.run_pass(due)
        finally:
            self.watcher.stop()
            for state in self.targets:
                state.close()
            self.save_pending()
            self.health.stopped()
            log.info("watcher daemon stopped")
        return 0

    # -- scheduling ------------------------------------------------------------------------------

    def save_pending(self, running: TargetState | None = None, batch: Batch | None = None) -> None:
        """Each target's pending changes: its own, the debouncer's (not yet handed out), and the
        batch `running` is being backed up with."""
        waiting = self.debouncer.pending()
        for state in self.targets:
            pending = Batch(set(state.pending.paths), state.pending.full)
            pending.merge(waiting)
            if state is running and batch is not None:
                pending.merge(batch)
            state.store.save(pending)

    def _health_interval(self) -> float:
        """Run at least this often so `health` proves every target is still reachable when idle."""
        return self.settings.health_max_age_seconds / 2

    def seconds_to_next(self) -> float:
        now = self.clock()
        waits = [TICK_SECONDS]
        due = self.debouncer.due_in()
        if due is not None:
            waits.append(due)
        for state in self.targets:
            if not state.pending:
                waits.append(max(0.0, state.last_run_end + self._health_interval() - now))
            elif state.retry_at is not None:
                waits.append(max(0.0, state.retry_at - now))
            if state.next_rescan is not None:
                waits.append(max(0.0, state.next_rescan - now))
        return min(waits)

    def due_targets(self) -> list[TargetState]:
        """Hand what is due to every target; the targets to back up now (those not in a back-off)."""
        now = self.clock()
        if self.debouncer.due_in() == 0:
            batch = self.debouncer.take()
            batch.reasons.append("changes")
            for state in self.targets:
                state.pending.merge(batch)
                state.pending.reasons = list(dict.fromkeys(state.pending.reasons))  # a long outage: no growth
        for state in self.targets:
            if now >= state.last_run_end + self._health_interval() and not state.pending:
                state.pending.merge(Batch(full=True, reasons=["no run for a while (health)"]))
        for state in self.targets:
            if state.next_rescan is not None and now >= state.next_rescan:
                state.pending.merge(Batch(full=True, reasons=["periodic rescan"]))
                state.next_rescan = None
            if state.retry_at is not None and now >= state.retry_at and state.pending:
                state.pending.reasons.append("retrying after a failed run")
        return [state for state in self.targets if state.pending and state.ready(now)]

    # -- one run: each due target in turn --------------------------------------------------------

    def run_pass(self, due: list[TargetState]) -> None:
        """Back up each of `due` with its own pending changes, then report the run once.

        An error that is not ours (a bug, a fault nobody foresaw) fails that target like any other:
        one line on the console, its traceback in the run's log and the mail, its changes kept
        pending, another try later. It never ends the daemon, nor keeps the other targets back.
        """
        with start_run_log(self.settings) as run_log:
            started = utc_now()
            union = Batch()
            for state in due:
                union.merge(state.pending)
            kind = "full scan" if union.full else f"{len(union.paths)} changed paths"
            log.info("run started (%s; %s)", kind, ", ".join(dict.fromkeys(union.reasons)) or "changes")
            outcomes: list[tuple[TargetOutcome, bool]] = []
            for state in due:
                if self.stop.is_set():
                    break
                outcome = self._run_target(state)
                state.last_run_end = self.clock()
                if outcome is not None:
                    outcomes.append(outcome)
            self.save_pending()
            if any(final for _, final in outcomes):
                finish_run(self.settings, run_log, started, self._report_lines(outcomes))

    def _report_lines(self, outcomes: list[tuple[TargetOutcome, bool]]) -> list[TargetOutcome]:
        """Every target, in order: what this run did to it, its last error if it waits in a back-off, or
        that nothing was due for it."""
        done = {outcome.target.number: outcome for outcome, _ in outcomes}
        lines = []
        for state in self.targets:
            if state.target.number in done:
                lines.append(done[state.target.number])
            elif state.last_error is not None:
                lines.append(TargetOutcome(state.target, error=state.last_error, next_step=self._next_step(state),
                                           retrying=not state.outage_reported))
            else:
                lines.append(TargetOutcome(state.target, idle=True))
        return lines

    def _run_target(self, state: TargetState) -> tuple[TargetOutcome, bool] | None:
        """One attempt to one target; (its outcome, whether the outcome is to be reported), or None
        if the daemon was stopped during it."""
        batch, state.pending = state.pending, Batch()
        batch.reasons = []
        self.save_pending(state, batch)
        changed = None if batch.full else sorted(batch.paths)
        began = self.clock()
        try:
            if state.repository is None:
                state.repository = open_repository(self.settings, state.target, create=True, stop=self.stop,
                                                   policy=self.connect_policy)
            result = backup_into(state.repository, self.settings, stop=self.stop, changed=changed)
        except ConfigError as error:  # such as a new repository on a server without a password
            state.close()
            if self.starting:
                state.pending.merge(batch)
                raise
            return self._failed(state, batch, error)
        except InterruptedRunError:
            state.close()
            state.pending.merge(batch)
            log.info("%s: run interrupted: its changes stay pending", state.label)
            return None
        except WatcherError as error:
            state.close()  # the next attempt starts from a fresh connection
            return self._failed(state, batch, error)
        except Exception as error:  # the one place that keeps the daemon alive
            state.close()
            log_traceback(log, error)
            return self._failed(state, batch, UnexpectedError.wrap(error))
        outcome = TargetOutcome(state.target, result=result, elapsed=self.clock() - began)
        state.failures, state.retry_at, state.outage_reported, state.last_error = 0, None, False, None
        if result.full_scan and self.settings.rescan_seconds > 0:
            state.next_rescan = self.clock() + self.settings.rescan_seconds
        self.health.run_finished(True, target=state.label)
        log_outcome(outcome)
        return outcome, True

    def _failed(self, state: TargetState, batch: Batch, error: WatcherError) -> tuple[TargetOutcome, bool]:
        """Keep the batch pending for this target alone and set its next attempt."""
        state.pending.merge(batch)
        state.failures += 1
        state.last_error = error
        retries = self.settings.retries
        if worth_retrying(error) and state.failures < retries and not state.outage_reported:
            wait = min(2.0 * 2 ** (state.failures - 1), self.settings.retry_max_seconds) + random.uniform(0, 2)
            state.retry_at = self.clock() + wait
            log.warning("%s: run failed (%s); attempt %d of %d in %.0f s", state.label, error, state.failures + 1,
                        retries, wait)
            return TargetOutcome(state.target, error=error, retrying=True,
                                 next_step=f"attempt {state.failures + 1} of {retries} in {wait:.0f} s"), False
        state.retry_at = self.clock() + self.settings.retry_max_seconds
        self.health.run_finished(False, str(error), target=state.label)
        outcome = TargetOutcome(state.target, error=error, next_step=self._next_step(state))
        if state.outage_reported:
            log.error("%s: run failed again: %s (next attempt at %s)", state.label, error, self._when(state))
            return outcome, False
        state.outage_reported = True
        log_outcome(outcome)
        return outcome, True

    def _when(self, state: TargetState) -> str:
        wait = max(0.0, (state.retry_at or self.clock()) - self.clock())
        return (datetime.now(UTC) + timedelta(seconds=wait)).strftime("%H:%M:%S UTC")

    def _next_step(self, state: TargetState) -> str:
        error = state.last_error
        kind = "may pass" if error is not None and worth_retrying(error) else "needs a person to fix its cause"
        if isinstance(error, UnexpectedError):
            kind = "is unexpected (a bug to report: its traceback is in the run's log)"
        return (f"the error {kind}; the daemon keeps watching and tries again at {self._when(state)}, "
                f"then every {self.settings.retry_max_seconds:.0f} s; every change made meanwhile will be in "
                f"this target's next snapshot; the other targets go on")
