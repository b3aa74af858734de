"""`watcher run`: a full backup at start, then one run per burst of changes, whatever happens.

One thread (this one) runs backups in series; watchdog's threads only feed the debouncer.
A run that fails with an error that may pass is retried with exponential back-off and jitter
(tenacity) up to BACKUP_RETRIES attempts; then the failure is reported once and the daemon
keeps watching and trying at the capped interval, so that when the target comes back every
change made meanwhile is in the next snapshot. Pending changes are saved in the state folder
(and the start-up run is a full scan anyway), so a restart or a crash loses none of them.
SIGTERM or SIGINT stops it promptly, interrupting any back-off, with no half snapshot visible.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from watcher.actions.backup import BackupResult
from watcher.config import Settings
from watcher.errors import (
    BackendError,
    InterruptedRunError,
    PermanentError,
    TransientError,
    UnexpectedError,
    WatcherError,
)
from watcher.health import HealthFile
from watcher.logs import RunLog, log_traceback
from watcher.notify import utc_now
from watcher.private import StateFile
from watcher.repository import Repository
from watcher.runs import backup_into, finish_run, never_back_up, open_repository, start_run_log
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


class Daemon:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.repository: Repository | None = None  # kept open between runs: a triggered run costs little
        self.stop = threading.Event()
        self.debouncer = Debouncer(settings.debounce_seconds, settings.max_delay_seconds, clock)
        excluder = Excluder(settings.exclude, never_back_up(settings))
        poll = max(1.0, min(settings.debounce_seconds, 10.0))
        self.watcher = SourceWatcher(settings.sources, excluder, settings.watch_mode, self.debouncer, poll)
        self.pending = PendingStore(settings.state_dir / "pending.json")
        self.health = HealthFile(settings.state_dir)
        self.failed = Batch()
        self.retry_at: float | None = None
        self.next_rescan: float | None = None
        self.last_run_end = clock()
        self.outage_reported = False

    # -- life cycle ----------------------------------------------------------------------------

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        if not self.stop.is_set():
            log.info("stopping (%s)", signal.Signals(signum).name if signum else "requested")
        self.stop.set()

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        self.health.started()
        log.info("watcher daemon started: %s -> %s", ", ".join(map(str, self.settings.sources)),
                 self.settings.target.describe() if self.settings.target else "?")
        self.watcher.start()
        try:
            start = self.pending.load()
            start.merge(Batch(full=True, reasons=["start-up"]))
            self.run_series(start)
            while not self.stop.is_set():
                self.stop.wait(self.seconds_to_next())
                if self.stop.is_set():
                    break
                self.watcher.check()
                self.pending.save(self._all_pending())
                batch = self.due_batch()
                if batch:
                    self.run_series(batch)
        finally:
            self.watcher.stop()
            self._close_repository()
            self.pending.save(self._all_pending())
            self.health.stopped()
            log.info("watcher daemon stopped")
        return 0

    # -- scheduling ------------------------------------------------------------------------------

    def _all_pending(self) -> Batch:
        batch = self.debouncer.pending()
        batch.merge(self.failed)
        return batch

    def _health_interval(self) -> float:
        """Run at least this often so `health` proves the target is still reachable when idle."""
        return self.settings.health_max_age_seconds / 2

    def seconds_to_next(self) -> float:
        now = self.clock()
        waits = [TICK_SECONDS, max(0.0, self.last_run_end + self._health_interval() - now)]
        due = self.debouncer.due_in()
        if due is not None and self.retry_at is None:
            waits.append(due)
        if self.retry_at is not None:
            waits.append(max(0.0, self.retry_at - now))
        if self.next_rescan is not None:
            waits.append(max(0.0, self.next_rescan - now))
        return min(waits)

    def due_batch(self) -> Batch:
        """The batch to run now, if anything is due."""
        now = self.clock()
        reasons: list[str] = []
        if self.retry_at is not None:
            if now < self.retry_at:
                return Batch()
            reasons.append("retrying after a failed run")
        elif self.debouncer.due_in() == 0:
            reasons.append("changes")
        if self.next_rescan is not None and now >= self.next_rescan:
            reasons.append("periodic rescan")
        if now >= self.last_run_end + self._health_interval():
            reasons.append("no run for a while (health)")
        if not reasons:
            return Batch()
        batch = self.debouncer.take()
        batch.merge(self.failed)
        self.failed = Batch()
        if "periodic rescan" in reasons or "no run for a while (health)" in reasons:
            batch.full = True
        batch.reasons += reasons
        return batch

    # -- one series of attempts ------------------------------------------------------------------

    def _interruptible_sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise InterruptedRunError("stopped while waiting to retry")

    def _before_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("run failed (%s); attempt %d of %d in %.0f s", error, state.attempt_number + 1,
                    self.settings.retries, state.upcoming_sleep)

    def run_series(self, batch: Batch) -> None:
        """Back up `batch` (retrying), then report; on failure keep it for the next try.

        An error that is not ours (a bug, a fault nobody foresaw) fails this run like any other:
        one line on the console, its traceback in the run's log and the mail, the changes kept
        pending, another try at the capped interval. It never ends the daemon.
        """
        self.pending.save(self._all_pending_with(batch))
        with start_run_log(self.settings) as run_log:
            started = utc_now()
            try:
                self._run_series(batch, run_log, started)
            except Exception as error:  # the one place that keeps the daemon alive
                log_traceback(log, error)
                self._failed(batch, UnexpectedError.wrap(error), run_log, started)

    def _run_series(self, batch: Batch, run_log: RunLog, started: datetime) -> None:
        kind = "full scan" if batch.full else f"{len(batch.paths)} changed paths"
        log.info("run started (%s; %s)", kind, ", ".join(dict.fromkeys(batch.reasons)) or "changes")
        retrying = Retrying(
            retry=retry_if_exception(worth_retrying),
            stop=stop_after_attempt(self.settings.retries),
            wait=wait_exponential_jitter(multiplier=2, max=self.settings.retry_max_seconds, jitter=2),
            sleep=self._interruptible_sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        began = self.clock()
        try:
            result = retrying(self._attempt, batch)
        except InterruptedRunError:
            self.failed.merge(batch)
            log.info("run interrupted: its changes stay pending")
            return
        except WatcherError as error:
            self._failed(batch, error, run_log, started)
            return
        finally:
            self.last_run_end = self.clock()
        self._succeeded(batch, result, run_log, started, self.last_run_end - began)

    def _all_pending_with(self, batch: Batch) -> Batch:
        pending = self._all_pending()
        pending.merge(batch)
        return pending

    def _attempt(self, batch: Batch) -> BackupResult:
        batch.merge(self.debouncer.take())  # changes that came during a back-off join this attempt
        self.pending.save(self._all_pending_with(batch))
        changed = None if batch.full else sorted(batch.paths)
        try:
            if self.repository is None:
                self.repository = open_repository(self.settings, create=True, stop=self.stop)
            return backup_into(self.repository, self.settings, stop=self.stop, changed=changed)
        except BaseException:
            self._close_repository()  # the next attempt starts from a fresh connection
            raise

    def _close_repository(self) -> None:
        if self.repository is not None:
            self.repository.close()
            self.repository = None

    def _succeeded(self, batch: Batch, result: BackupResult, run_log: RunLog, started: datetime,
                   elapsed: float) -> None:
        self.retry_at = None
        self.outage_reported = False
        if result.full_scan and self.settings.rescan_seconds > 0:
            self.next_rescan = self.clock() + self.settings.rescan_seconds
        self.health.run_finished(True)
        finish_run(self.settings, run_log, started, result, None, None, elapsed)
        self.pending.save(self._all_pending())

    def _failed(self, batch: Batch, error: WatcherError, run_log: RunLog, started: datetime) -> None:
        self.failed.merge(batch)
        wait = self.settings.retry_max_seconds
        self.retry_at = self.clock() + wait
        when = (datetime.now(UTC) + timedelta(seconds=wait)).strftime("%H:%M:%S UTC")
        self.health.run_finished(False, str(error))
        self.pending.save(self._all_pending())
        kind = "may pass" if worth_retrying(error) else "needs a person to fix its cause"
        if isinstance(error, UnexpectedError):
            kind = "is unexpected (a bug to report: its traceback is in the run's log)"
        next_step = (f"the error {kind}; the daemon keeps watching and tries again at {when}, "
                     f"then every {wait:.0f} s; every change made meanwhile will be in the next snapshot")
        if self.outage_reported:
            log.error("run failed again: %s (next attempt at %s)", error, when)
            return
        self.outage_reported = True
        finish_run(self.settings, run_log, started, None, error, next_step)
