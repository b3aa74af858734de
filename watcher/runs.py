"""One backup run with its log and its report: what `watcher backup` and the daemon share.

The daemon adds run-level retries around `attempt_backup`; both end with `finish_run`, which
turns the outcome into a report and mails it as `MAIL_ON` says.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime

from watcher import scan
from watcher.actions.backup import BackupOptions, BackupResult, Progress, run_backup
from watcher.actions.prune import run_forget
from watcher.backends import create_backend
from watcher.config import Settings, Target
from watcher.errors import WatcherError
from watcher.locks import locked
from watcher.logs import RunLog
from watcher.notify import RunReport, send_report, utc_now
from watcher.repository import Repository
from watcher.retry import RetryingBackend, RetryPolicy
from watcher.snapshot import Snapshot
from watcher.text import format_size, printable

log = logging.getLogger("watcher.run")


def open_repository(settings: Settings, target: Target | None = None, *, create: bool = False,
                    stop: threading.Event | None = None, policy: RetryPolicy | None = None) -> Repository:
    """Connect to `target` (the first one if None), read the repository config and its index."""
    backend = RetryingBackend(create_backend(settings, target), policy, stop)
    repository = Repository(backend, settings.state_dir)
    try:
        backend.open()
        repository.open(create=create)
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
    """The local repository and the state folder, should they sit inside a source, by every name
    the walk and the watcher may give them (one named through a symlink included)."""
    paths = [str(settings.state_dir)]
    if settings.target is not None and settings.target.scheme == "file":
        paths.append(settings.target.path)
    sources = dict(zip(map(str, settings.sources), real_sources(settings), strict=True))
    return scan.never_back_up(paths, sources)


def attempt_backup(settings: Settings, *, progress: Progress | None = None, stop: threading.Event | None = None,
                   policy: RetryPolicy | None = None, changed: list[str] | None = None) -> BackupResult:
    """One attempt: open, back up (everything, or only `changed` paths), close. Raises WatcherError."""
    repository = open_repository(settings, create=True, stop=stop, policy=policy)
    try:
        return backup_into(repository, settings, progress=progress, stop=stop, changed=changed)
    finally:
        repository.close()


def backup_into(repository: Repository, settings: Settings, *, progress: Progress | None = None,
                stop: threading.Event | None = None, changed: list[str] | None = None) -> BackupResult:
    """Back up into an open repository (the daemon keeps one open between runs), then apply retention."""
    options = BackupOptions(settings.sources, settings.exclude, settings.host, never_back_up(settings),
                            real_sources(settings))
    with locked(repository, exclusive=False):
        repository.load_index()  # under the lock: a `forget` that ran before it is seen, none runs during it
        result = run_backup(repository, options, progress, stop, changed)
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
class RunOutcome:
    report: RunReport
    result: BackupResult | None
    error: WatcherError | None


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


def finish_run(settings: Settings, run_log: RunLog, started: datetime, result: BackupResult | None,
               error: WatcherError | None, next_step: str | None, elapsed: float | None = None) -> RunOutcome:
    """Log the outcome, build the report (with the run's log so far) and mail it per MAIL_ON."""
    target = settings.target.describe() if settings.target else "?"
    if result is not None:
        log.info("%s", describe_result(result, elapsed))
        if result.warnings:
            log.warning("%d files or folders could not be read", len(result.warnings))
    else:
        log.error("backup failed: %s", error)
        if next_step:
            log.info("next: %s", next_step)
    report = RunReport(
        ok=result is not None,
        host=settings.host,
        sources=tuple(str(source) for source in settings.sources),
        target=target,
        started=started,
        finished=utc_now(),
        snapshot_id=result.snapshot.id if result and result.snapshot else None,
        parent_id=result.parent.id if result and result.parent else None,
        summary=result.summary if result else None,
        warnings=tuple(result.warnings) if result else (),
        error=str(error) if error else None,
        next_step=next_step,
        log_text=run_log.text(),
    )
    send_report(settings, report)
    return RunOutcome(report, result, error)


def start_run_log(settings: Settings) -> RunLog:
    return RunLog(settings.state_dir / "logs", settings.secrets(), clean=printable)
