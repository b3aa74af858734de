"""One backup run with its log and its report: what `watcher backup` and the daemon share.

A run backs up to every target in turn, each an independent repository; each target's outcome
is logged as it ends (`log_outcome`), and `finish_run` turns all of them into one report and
mails it as `MAIL_ON` says. The daemon adds per-target retries around `backup_into`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, replace
from datetime import datetime

from watcher import retry, scan
from watcher.actions.backup import BackupOptions, BackupResult, Progress, run_backup
from watcher.actions.prune import run_forget
from watcher.backends import create_backend
from watcher.config import Settings, Target
from watcher.errors import WatcherError
from watcher.locks import locked
from watcher.logs import RunLog
from watcher.notify import RunReport, TargetLine, send_report, utc_now
from watcher.repository import Protection, Repository
from watcher.retry import RetryingBackend, RetryPolicy
from watcher.snapshot import Snapshot
from watcher.text import format_size, printable

log = logging.getLogger("watcher.run")


def operation_policy(settings: Settings, *, attempts: int | None = None, connect_once: bool = False) -> RetryPolicy:
    """How each request to a target is retried: seconds-scale waits (at most 20 s, less if
    BACKUP_RETRY_MAX_SECONDS says so: its 300 s default is sized for the daemon's retries of whole runs)."""
    base = retry.DEFAULT_POLICY
    return replace(base, attempts=attempts or base.attempts, connect_once=connect_once,
                   max_seconds=min(base.max_seconds, settings.retry_max_seconds))


def open_repository(settings: Settings, target: Target | None = None, *, create: bool = False,
                    stop: threading.Event | None = None, policy: RetryPolicy | None = None) -> Repository:
    """Connect to `target` (the first one if None), read the repository config and its index.

    Without a `policy` (a one-shot command), each request is tried `BACKUP_RETRIES` times; the
    daemon passes its own, as it also retries whole runs."""
    policy = policy or operation_policy(settings, attempts=settings.retries)
    backend = RetryingBackend(create_backend(settings, target), policy, stop)
    chosen = target or settings.target
    protection = Protection(settings.repository_password, settings.encryption, settings.compression,
                            server=chosen is not None and chosen.scheme != "file")
    repository = Repository(backend, settings.state_dir, protection)
    try:
        repository.start_unlock(create=create)  # scrypt in a thread, beside connecting
        backend.open()
        repository.open(create=create, exclusive=lambda: locked(repository, exclusive=True))
        repository.load_index()
    except BaseException:
        repository.close()
        raise
    return repository


_RESOLVED: dict[str, str] = {}  # source -> its real path, fixed for the life of the process


def real_sources(settings: Settings) -> tuple[str, ...]:
    """Each source's real path, resolved the first time this process meets it (daemon start-up,
    or `watcher backup`) and said in the log. The walk then never follows a symlink: a source, or
    a folder on its way, that becomes one later is refused with a warning."""
    for source in map(str, settings.sources):
        if source not in _RESOLVED:
            _RESOLVED[source] = os.path.realpath(source)
            if _RESOLVED[source] != source:
                log.warning("source %s is reached through a symlink: backing up %s (resolved once, at start; "
                         "stored as %s)", source, _RESOLVED[source], source)
    return tuple(_RESOLVED[str(source)] for source in settings.sources)


def never_back_up(settings: Settings) -> tuple[str, ...]:
    """Every local repository and the state folder, should they sit inside a source, by every name
    the walk and the watcher may give them (one named through a symlink included)."""
    paths = [str(settings.state_dir)]
    paths += [target.path for target in settings.targets if target.scheme == "file"]
    sources = dict(zip(map(str, settings.sources), real_sources(settings), strict=True))
    return scan.never_back_up(paths, sources)


def attempt_backup(settings: Settings, target: Target, *, progress: Progress | None = None,
                   stop: threading.Event | None = None, policy: RetryPolicy | None = None,
                   changed: list[str] | None = None) -> BackupResult:
    """One attempt to `target`: open, back up (everything, or only `changed` paths), close. Raises WatcherError."""
    repository = open_repository(settings, target, create=True, stop=stop, policy=policy)
    try:
        return backup_into(repository, settings, progress=progress, stop=stop, changed=changed)
    finally:
        repository.close()


def backup_into(repository: Repository, settings: Settings, *, progress: Progress | None = None,
                stop: threading.Event | None = None, changed: list[str] | None = None) -> BackupResult:
    """Back up into an open repository (the daemon keeps one open between runs), then apply retention."""
    options = BackupOptions(settings.sources, settings.exclude, settings.host, never_back_up(settings),
                            real_sources(settings))
    with locked(repository, exclusive=False) as lease:
        repository.load_index()  # under the lock: a `forget` that ran before it is seen, none runs during it
        result = run_backup(repository, options, progress, stop, changed, lease=lease)
    if result.snapshot is not None and settings.retention.is_set():
        lost = result.snapshot.incomplete.sources
        if lost:
            log.warning("retention not applied: %s could not be read or is empty; the earlier snapshots "
                        "that hold it are kept", ", ".join(lost))
        else:
            apply_retention(repository, settings, result.snapshot)
    return result


def apply_retention(repository: Repository, settings: Settings, saved: Snapshot) -> None:
    """After a successful run: forget what the policy does not keep, never the snapshot just `saved`
    (whatever other snapshots' times say); a failure here is only logged."""
    try:
        outcome = run_forget(repository, settings.retention, protected=frozenset({saved.id}))
    except WatcherError as error:
        log.warning("retention not applied this time: %s", error)
        return
    if outcome.not_pruned:
        log.warning("retention: %s", outcome.not_pruned)
    if outcome.removed_snapshots:
        log.info("retention: forgot %d snapshots, removed %d packs (%s)", outcome.removed_snapshots,
                 outcome.deleted_packs, format_size(outcome.freed_bytes))


@dataclass
class TargetOutcome:
    """What one run did to one target: a result, or the error it failed with (and what comes next)."""

    target: Target
    result: BackupResult | None = None
    error: WatcherError | None = None
    next_step: str | None = None
    elapsed: float | None = None
    retrying: bool = False  # failed, but its retries are not spent: not yet a failure to report
    idle: bool = False  # not tried in this run: nothing was due for it, and it is not failing

    def line(self) -> TargetLine:
        if self.idle:
            return TargetLine(self.target.label(), True, "nothing due for it in this run")
        if self.result is None and self.retrying:
            return TargetLine(self.target.label(), True, f"retrying after: {self.error}; {self.next_step}")
        if self.result is None:
            text = f"FAILED: {self.error}" + (f" Next: {self.next_step}" if self.next_step else "")
            return TargetLine(self.target.label(), False, text)
        if self.result.snapshot is None:
            parent = self.result.parent.id if self.result.parent else "?"
            return TargetLine(self.target.label(), True, f"no change since snapshot {parent}")
        summary = self.result.summary
        return TargetLine(self.target.label(), True,
                          f"snapshot {self.result.snapshot.id} ({summary.new} new, {summary.changed} changed, "
                          f"{summary.removed} removed; {format_size(summary.bytes_added)} uploaded)")


def describe_result(result: BackupResult, elapsed: float | None = None) -> str:
    """One line for the log and the terminal; `elapsed` adds the whole attempt's time (the daemon's)."""
    summary = result.summary
    if elapsed is not None:
        return f"{describe_result(result)} ({elapsed:.3f} s with connecting and reading the index)"
    counts = (f"{summary.files} files ({summary.new} new, {summary.changed} changed, "
              f"{summary.unchanged} unchanged, {summary.removed} removed)")
    if result.snapshot is None:
        parent = result.parent.id if result.parent else "?"
        return f"no change since snapshot {parent}: no snapshot added; {counts}, in {summary.duration_seconds:.1f} s"
    return (f"snapshot {result.snapshot.id} saved: {counts}, {format_size(summary.bytes_read)} read, "
            f"{format_size(summary.bytes_added)} added, in {summary.duration_seconds:.1f} s")


def log_outcome(outcome: TargetOutcome) -> None:
    """The target's one line in the log, as it ends (the benchmark reads these)."""
    label = outcome.target.label()
    if outcome.result is not None:
        log.info("%s: %s", label, describe_result(outcome.result, outcome.elapsed))
        if outcome.result.warnings:
            log.warning("%s: %d files or folders could not be read", label, len(outcome.result.warnings))
    else:
        log.error("%s: backup failed: %s", label, outcome.error)
        if outcome.next_step:
            log.info("%s: next: %s", label, outcome.next_step)


def finish_run(settings: Settings, run_log: RunLog, started: datetime, outcomes: list[TargetOutcome]) -> RunReport:
    """Build one report of every target's outcome (with the run's log so far) and mail it per MAIL_ON."""
    first = outcomes[0]
    result = first.result if len(outcomes) == 1 else None
    warnings = tuple(warning for outcome in outcomes if outcome.result for warning in outcome.result.warnings)
    failed = [outcome for outcome in outcomes if outcome.error is not None and not outcome.retrying]
    report = RunReport(
        ok=not failed,
        host=settings.host,
        sources=tuple(str(source) for source in settings.sources),
        target=first.target.describe(),
        started=started,
        finished=utc_now(),
        snapshot_id=result.snapshot.id if result and result.snapshot else None,
        parent_id=result.parent.id if result and result.parent else None,
        summary=result.summary if result else None,
        warnings=tuple(dict.fromkeys(warnings)),
        error=str(first.error) if len(outcomes) == 1 and first.error else None,
        next_step=first.next_step if len(outcomes) == 1 else None,
        log_text=run_log.text(),
        targets=tuple(outcome.line() for outcome in outcomes),
    )
    send_report(settings, report)
    return report


def start_run_log(settings: Settings) -> RunLog:
    return RunLog(settings.state_dir / "logs", settings.secrets(), clean=printable)
