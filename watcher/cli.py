"""The command line: parse, load the configuration, run one action, print, pick the exit status.

This is the only module that prints for the user or decides an exit status; `main` returns
the status instead of exiting, so tests run the real CLI in process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from watcher import __version__
from watcher.actions.check import run_check
from watcher.actions.doctor import Verdict, check_repository, check_sources, check_state_dir
from watcher.actions.listing import diff_snapshots, list_entries, snapshot_as_json
from watcher.actions.prune import run_forget
from watcher.actions.restore import run_restore
from watcher.config import MAX_TARGETS, Settings, Target, load_settings, read_environment, target_variable
from watcher.errors import (
    ConfigError,
    ExitCode,
    IntegrityError,
    NotFoundError,
    RepositoryError,
    UnexpectedError,
    WatcherError,
)
from watcher.locks import locked
from watcher.logs import log_traceback, redact, setup_console
from watcher.notify import check_mail_server, utc_now
from watcher.repository import Repository
from watcher.runs import (
    TargetOutcome,
    attempt_backup,
    describe_result,
    finish_run,
    log_outcome,
    open_repository,
    start_run_log,
)
from watcher.text import format_size, printable

log = logging.getLogger("watcher")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watcher",
        description="Versioned, deduplicated backups of watched folders to FTP, FTPS, SFTP or a local folder.",
    )
    parser.add_argument("--version", action="version", version=f"watcher {__version__}")
    parser.add_argument("--env-file", metavar="PATH", help="read variables from PATH instead of ./.env")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chooses = argparse.ArgumentParser(add_help=False)  # the commands that read one repository
    chooses.add_argument("--target", type=int, default=1, metavar="N",
                         help="the repository of BACKUP_TARGET_N (1: BACKUP_TARGET, the default)")
    commands.add_parser("backup", help="run one backup now",
                        description="Back up BACKUP_SOURCES to BACKUP_TARGET now. Exit status: 0 ok, "
                                    "1 failed, 3 done with warnings (some files could not be read).")
    snapshots = commands.add_parser("snapshots", parents=[chooses], help="list the snapshots, oldest first")
    snapshots.add_argument("--json", action="store_true", help="print JSON")
    ls = commands.add_parser("ls", parents=[chooses], help="list the entries of a snapshot")
    ls.add_argument("snapshot", help="snapshot id, unique prefix, or 'latest'")
    ls.add_argument("path", nargs="?", default="/", help="absolute path inside the snapshot (default: all)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    diff = commands.add_parser("diff", parents=[chooses],
                               help="paths added, removed and changed between two snapshots")
    diff.add_argument("first")
    diff.add_argument("second")
    restore = commands.add_parser("restore", parents=[chooses],
                                  help="restore a snapshot, or some paths of it, under a folder",
                                  description="Each entry is restored at DIR joined with its absolute path; "
                                              "every byte is verified; nothing is written outside DIR.")
    restore.add_argument("snapshot", help="snapshot id, unique prefix, or 'latest'")
    restore.add_argument("--to", required=True, metavar="DIR", type=Path, help="folder to restore into")
    restore.add_argument("paths", nargs="*", metavar="PATH", help="absolute paths inside the snapshot")
    check = commands.add_parser("check", parents=[chooses], help="verify the repository (exit 1 when damaged)")
    check.add_argument("--read-data", action="store_true", help="also download and verify every stored byte")
    forget = commands.add_parser("forget", parents=[chooses],
                                 help="apply the retention policy and remove data no snapshot needs",
                                 description="Keeps what BACKUP_KEEP_LAST/_HOURLY/_DAILY/_WEEKLY/_MONTHLY/_YEARLY "
                                             "say (restic's meaning; none set: keep all), then removes the data "
                                             "no remaining snapshot needs.")
    forget.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    key = commands.add_parser("key", help="list, add, remove or change the passwords of an encrypted repository",
                              description="An encrypted repository's master keys are stored once per password, "
                                          "in keys/<id>; any of them opens it. The new password of add and passwd "
                                          "comes from BACKUP_NEW_REPOSITORY_PASSWORD (_FILE), or is asked on "
                                          "the terminal.")
    actions = key.add_subparsers(dest="key_action", required=True, metavar="ACTION")
    key_list = actions.add_parser("list", parents=[chooses], help="the keys (* marks the one the password opens)")
    key_list.add_argument("--json", action="store_true", help="print JSON")
    actions.add_parser("add", parents=[chooses], help="add a key for a new password")
    key_remove = actions.add_parser("remove", parents=[chooses], help="remove a key (never the last one)")
    key_remove.add_argument("id", help="key id or unique prefix")
    actions.add_parser("passwd", parents=[chooses],
                       help="change the password: a key for the new one replaces the current one")
    commands.add_parser("doctor", help="check configuration, every target, local state and mail, one line per check")
    commands.add_parser("run", help="the daemon: back up at start, then on every burst of changes",
                        description="Back up at start, then watch BACKUP_SOURCES and back up each burst of "
                                    "changes; retry, report by mail; SIGTERM or SIGINT stops it cleanly (exit 0).")
    commands.add_parser("health", help="exit 0 if the daemon is alive and backing up, 1 otherwise",
                        description="For a container HEALTHCHECK: the daemon is alive, its last run succeeded and "
                                    "a run succeeded within BACKUP_HEALTH_MAX_AGE_SECONDS.")
    return parser


class Context:
    """What a command needs: settings, the target it reads (`--target N`), and a way to open that
    target's repository (closed at the end)."""

    def __init__(self, settings: Settings, out: Callable[[str], None], target: Target | None = None) -> None:
        self.settings = settings
        self.out = out
        self.target = target or settings.target
        self.repository: Repository | None = None

    def open_repository(self) -> Repository:
        self.repository = open_repository(self.settings, self.target)
        return self.repository

    def name_target(self) -> None:
        """With several targets, human output starts by saying which one it describes."""
        if len(self.settings.targets) > 1 and self.target is not None:
            self.out(self.target.label())

    def target_json(self) -> dict[str, object]:
        """The target a `--json` item comes from ("repository": `target` is a symlink's in `ls`)."""
        assert self.target is not None
        return {"number": self.target.number, "url": self.target.describe()}

    def close(self) -> None:
        if self.repository is not None:
            self.repository.close()


def choose_target(settings: Settings, number: int) -> Target:
    """The target `--target N` names; a number that is not configured is a configuration error."""
    if not 1 <= number <= MAX_TARGETS:
        raise ConfigError([f"--target {number}: targets are numbered 1 to {MAX_TARGETS}"])
    for target in settings.targets:
        if target.number == number:
            return target
    numbers = [str(target.number) for target in settings.targets]
    known = numbers[0] if len(numbers) == 1 else f"{', '.join(numbers[:-1])} and {numbers[-1]}"
    raise ConfigError([f"--target {number}: {target_variable(number)} is not set "
                       f"(the target{'s are' if len(numbers) > 1 else ' is'} {known})"])


NO_RETRY = "watcher backup does not retry by itself: run it again once the cause is fixed"


def _failure(outcome: TargetOutcome) -> str:
    """`target N (URL): cause`, the URL said once: most causes start with it already."""
    cause, url = str(outcome.error), outcome.target.describe()
    name = f"target {outcome.target.number}" if cause.startswith(url) else outcome.target.label()
    return f"{name}: {cause}"


def cmd_backup(context: Context, args: argparse.Namespace) -> int:
    """Back up to every target in turn; one that fails does not keep the others from their snapshot."""
    settings = context.settings
    with start_run_log(settings) as run_log:
        started = utc_now()
        log.info("backup of %s to %s", ", ".join(map(str, settings.sources)),
                 ", ".join(target.describe() for target in settings.targets))
        outcomes = [_backup_to(settings, target) for target in settings.targets]
        finish_run(settings, run_log, started, outcomes)
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    if len(outcomes) == 1 and failed:
        raise failed[0].error  # one target: its own error and exit status, as before several targets
    for outcome in outcomes:
        if outcome.result is not None:
            prefix = f"{outcome.target.label()}: " if len(outcomes) > 1 else ""
            context.out(prefix + describe_result(outcome.result))
    if failed:
        raise WatcherError("backup failed for " + "; ".join(map(_failure, failed)))
    warnings = sum(len(outcome.result.warnings) for outcome in outcomes if outcome.result)
    if warnings:
        context.out(f"{warnings} warnings: some files could not be read (see the log above)")
        return ExitCode.WARNINGS
    return ExitCode.OK


def _backup_to(settings: Settings, target: Target) -> TargetOutcome:
    """One target's attempt, its failure caught (a bug too: reported like any failure) and logged."""
    from watcher import progress

    bar = progress.BackupBar() if progress.wanted() else None
    try:
        outcome = TargetOutcome(target, result=attempt_backup(settings, target, progress=bar))
    except WatcherError as error:
        outcome = TargetOutcome(target, error=error, next_step=NO_RETRY)
    except Exception as caught:  # a bug or a fault nobody foresaw
        log_traceback(log, caught)
        outcome = TargetOutcome(target, error=UnexpectedError.wrap(caught), next_step=NO_RETRY)
    finally:
        if bar is not None:
            bar.close()
    log_outcome(outcome)
    return outcome


def cmd_snapshots(context: Context, args: argparse.Namespace) -> int:
    repository = context.open_repository()
    snapshots = repository.list_snapshots()  # those it cannot read are named in one warning each
    if args.json:
        where = context.target_json()
        context.out(json.dumps([{**snapshot_as_json(snapshot), "repository": where} for snapshot in snapshots],
                               indent=1))
        return ExitCode.OK
    context.name_target()
    context.out(f"{'ID':<25} {'TIME (UTC)':<20} {'HOST':<16} {'FILES':>8} {'SIZE':>11} {'ADDED':>11}")
    for snapshot in snapshots:
        summary = snapshot.summary
        host = printable(snapshot.host[:16])
        context.out(f"{snapshot.id:<25} {snapshot.time_text:<20} {host:<16} {summary.files:>8} "
                    f"{format_size(summary.bytes):>11} {format_size(summary.bytes_added):>11}")
    more = f"; {len(repository.unreadable)} more cannot be read" if repository.unreadable else ""
    context.out(f"{len(snapshots)} snapshots{more}")
    return ExitCode.OK


def cmd_ls(context: Context, args: argparse.Namespace) -> int:
    repository = context.open_repository()
    snapshot = repository.find_snapshot(args.snapshot)
    entries = list_entries(repository, snapshot, args.path)
    if args.json:
        where = context.target_json()
        context.out(json.dumps([{**entry.as_json(), "snapshot": snapshot.id, "repository": where}
                                for entry in entries], indent=1))
    else:
        context.name_target()
        for entry in entries:
            context.out(entry.as_line())
    return ExitCode.OK


def cmd_diff(context: Context, args: argparse.Namespace) -> int:
    repository = context.open_repository()
    first, second = repository.find_snapshot(args.first), repository.find_snapshot(args.second)
    difference = diff_snapshots(repository, first, second)
    context.name_target()
    for mark, paths in (("+", difference.added), ("-", difference.removed), ("M", difference.changed)):
        for path in sorted(paths):
            context.out(f"{mark} {printable(path)}")
    context.out(f"{len(difference.added)} added, {len(difference.removed)} removed, "
                f"{len(difference.changed)} changed")
    return ExitCode.OK


def cmd_restore(context: Context, args: argparse.Namespace) -> int:
    from watcher import progress

    repository = context.open_repository()
    snapshot = repository.find_snapshot(args.snapshot)
    bar = progress.RestoreBar() if progress.wanted() else None
    try:
        result = run_restore(repository, snapshot, args.to.absolute(), args.paths, bar)
    finally:
        if bar is not None:
            bar.close()
    context.name_target()
    context.out(f"restored snapshot {snapshot.id} into {printable(str(args.to))}: {result.files} files, "
                f"{result.dirs} folders, {result.symlinks} links, {format_size(result.bytes)} (every byte verified)")
    if result.errors:
        for error in result.errors:
            context.out(f"failed: {printable(error)}")
        context.out(f"{len(result.errors)} entries could not be restored")
        return ExitCode.FAILED
    return ExitCode.OK


def cmd_check(context: Context, args: argparse.Namespace) -> int:
    repository = context.open_repository()
    with locked(repository, exclusive=False):
        result = run_check(repository, read_data=args.read_data)
    context.name_target()
    detail = f"{result.snapshots} snapshots, {result.packs} packs"
    if args.read_data:
        detail += f", {result.blobs} blobs and {format_size(result.bytes_read)} read and verified"
    if result.unindexed_packs:
        detail += f"; {result.unindexed_packs} packs left by interrupted runs (harmless)"
    if result.sound:
        context.out(f"repository sound: {detail}")
        return ExitCode.OK
    for problem in result.problems:
        context.out(f"damaged: {printable(problem)}")
    context.out(f"repository damaged: {len(result.problems)} problems ({detail})")
    return ExitCode.FAILED


def cmd_forget(context: Context, args: argparse.Namespace) -> int:
    result = run_forget(context.open_repository(), context.settings.retention, dry_run=args.dry_run)
    context.name_target()
    verb = "would remove" if args.dry_run else "removed"
    for decision in result.decisions:
        snapshot = decision.snapshot
        if decision.keep:
            context.out(f"keep   {snapshot.id} {snapshot.time_text} ({', '.join(decision.reasons)})")
        else:
            context.out(f"forget {snapshot.id} {snapshot.time_text}")
    if result.not_pruned:
        context.out(f"{verb} {result.removed_snapshots} snapshots; {result.not_pruned}")
        return ExitCode.WARNINGS
    context.out(f"{verb} {result.removed_snapshots} snapshots; {result.deleted_packs} packs deleted, "
                f"{result.repacked_packs} repacked, {format_size(result.freed_bytes)} freed; "
                f"{result.kept_packs} packs kept as they are")
    if result.removed_temporaries:
        context.out(f"{verb} {result.removed_temporaries} left-over temporary upload files (untouched for a day)")
    return ExitCode.OK


def new_password(settings: Settings) -> str:
    """BACKUP_NEW_REPOSITORY_PASSWORD, or asked twice on a terminal."""
    if settings.new_repository_password:
        return settings.new_repository_password
    name = "BACKUP_NEW_REPOSITORY_PASSWORD"
    if not sys.stdin.isatty():
        raise ConfigError([f"{name}: required (or {name}_FILE), or run the command on a terminal to be asked"])
    import getpass

    first = getpass.getpass("new repository password: ")
    if not first:
        raise ConfigError([f"{name}: the new password is empty"])
    if getpass.getpass("the same again: ") != first:
        raise ConfigError([f"{name}: the two passwords typed differ"])
    return first


def cmd_key(context: Context, args: argparse.Namespace) -> int:
    repository = context.open_repository()
    if not repository.codec.encrypted:
        raise RepositoryError(f"the repository at {repository.backend.describe()} is not encrypted: it has no keys")
    action = args.key_action
    if action == "list":
        keys = []
        for key_id in repository.key_ids():
            item: dict[str, object] = {"id": key_id, "current": key_id == repository.key_id}
            try:
                key = repository.read_key(key_id)
                item |= {"created": key.created, "host": key.host,
                         "kdf": {"name": "scrypt", "n": key.params.n, "r": key.params.r, "p": key.params.p}}
            except (IntegrityError, NotFoundError) as error:
                item["damaged"] = str(error)
            keys.append(item)
        if args.json:
            context.out(json.dumps([{**item, "repository": context.target_json()} for item in keys], indent=1))
            return ExitCode.OK
        context.name_target()
        context.out(f"  {'ID':<12} {'CREATED (UTC)':<20} HOST")
        for item in keys:
            mark = "*" if item["current"] else " "
            created = str(item.get("created", ""))[:19].replace("T", " ") if "created" in item else "damaged"
            context.out(f"{mark} {str(item['id'])[:12]} {created:<20} {printable(str(item.get('host', '')))}")
        context.out(f"{len(keys)} keys")
        return ExitCode.OK
    password = new_password(context.settings) if action in ("add", "passwd") else None
    with locked(repository, exclusive=True):  # key changes one at a time: never two removals leaving none
        if action == "remove":
            matches = [key_id for key_id in repository.key_ids() if key_id.startswith(args.id)]
            if len(matches) != 1:
                raise RepositoryError(f"no key matches {args.id!r}" if not matches
                                      else f"{args.id!r} matches {len(matches)} keys; give more of the id")
            repository.remove_key(matches[0])
            context.out(f"removed key {matches[0][:12]}")
            return ExitCode.OK
        assert password is not None
        added = repository.add_key(password, remember=action == "passwd")
        if action == "add":
            context.out(f"added key {added[:12]}: the new password opens the repository too")
            return ExitCode.OK
        old, repository.key_id = repository.key_id, added
        if old is not None:
            repository.remove_key(old)
    context.out(f"password changed: key {added[:12]} replaces key {(old or '?')[:12]}; set "
                "BACKUP_REPOSITORY_PASSWORD to the new password")
    return ExitCode.OK


def creation(settings: Settings, target: Target) -> tuple[bool, str]:
    """Whether the first backup may create a repository on `target`, and what it would create."""
    if settings.repository_password and settings.encryption != "none":
        return True, "the first backup creates it, encrypted"
    if settings.encryption != "none" and target.scheme != "file":
        return False, ("the first backup would refuse to create it: set BACKUP_REPOSITORY_PASSWORD (or "
                       "BACKUP_ENCRYPTION=none)")
    return True, "the first backup creates it, not encrypted"


def cmd_doctor(context: Context, args: argparse.Namespace) -> int:
    settings = context.settings
    verdicts = [Verdict(True, "configuration", "all variables valid"), check_sources(settings.sources),
                check_state_dir(settings.state_dir)]
    several = len(settings.targets) > 1
    for target in settings.targets:
        name = f"target {target.number}" if several else "target"

        def opened(target: Target = target) -> Repository:
            return open_repository(settings, target)

        verdicts += check_repository(opened, target.describe(), name, f"{name} repository" if several else "repository",
                                     creation(settings, target))
        plain = {"ftp": "plain FTP: transfers are not encrypted",
                 "s3+http": "plain HTTP: transfers are not encrypted (requests are signed; the secret is never sent)"}
        if target.scheme in plain:
            verdicts.append(Verdict(True, f"{name} encryption" if several else "encryption", plain[target.scheme]))
    if settings.smtp_host:
        try:
            verdicts.append(Verdict(True, "mail server", check_mail_server(settings)))
        except WatcherError as error:
            verdicts.append(Verdict(False, "mail server", str(error)))
    else:
        verdicts.append(Verdict(None, "mail server", "not configured (SMTP_HOST unset): no report mails"))
    for verdict in verdicts:
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[verdict.ok]
        context.out(f"{mark} {verdict.name}: {printable(verdict.detail)}")
    return ExitCode.OK if all(verdict.ok is not False for verdict in verdicts) else ExitCode.FAILED


def cmd_run(context: Context, args: argparse.Namespace) -> int:
    from watcher.daemon import Daemon

    return Daemon(context.settings).run()


def cmd_health(context: Context, args: argparse.Namespace) -> int:
    from watcher.health import verdict

    healthy, reason = verdict(context.settings.state_dir, context.settings.health_max_age_seconds)
    context.out(printable(reason))
    return ExitCode.OK if healthy else ExitCode.FAILED


# name: (function, needs the sources, needs the target)
COMMANDS: dict[str, tuple[Callable[[Context, argparse.Namespace], int], bool, bool]] = {
    "backup": (cmd_backup, True, True),
    "snapshots": (cmd_snapshots, False, True),
    "ls": (cmd_ls, False, True),
    "diff": (cmd_diff, False, True),
    "restore": (cmd_restore, False, True),
    "check": (cmd_check, False, True),
    "forget": (cmd_forget, False, True),
    "key": (cmd_key, False, True),
    "doctor": (cmd_doctor, True, True),
    "run": (cmd_run, True, True),
    "health": (cmd_health, False, False),
}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; return its exit status. Only expected failures print one line."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "restore" or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.paths += extra  # `restore SNAPSHOT --to DIR PATH...`: paths after the option
    environ = os.environ if environ is None else environ
    secrets: list[str] = []
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a core dump would hold passwords and master keys

    def err(message: str) -> None:
        print(printable(redact(message, secrets)), file=sys.stderr)

    def out(message: str) -> None:
        print(redact(message, secrets), flush=True)

    try:
        env = read_environment(environ, args.env_file, Path.cwd())
        command, needs_sources, needs_target = COMMANDS[args.command]
        settings = load_settings(env, need_sources=needs_sources, need_target=needs_target)
        target = choose_target(settings, args.target) if "target" in args else settings.target
    except ConfigError as error:
        for problem in error.problems:
            err(f"error: {problem}")
        return ExitCode.CONFIG
    secrets.extend(settings.secrets())
    if args.command == "run":  # the daemon's log is its output: stdout, as `docker logs` shows it
        setup_console(logging.DEBUG if args.verbose else logging.INFO, secrets, sys.stdout, printable)
    else:
        setup_console(logging.DEBUG if args.verbose else logging.WARNING, secrets, clean=printable)
    context = Context(settings, out, target)
    try:
        return command(context, args)
    except WatcherError as error:
        err(f"error: {error}")
        return error.exit_code
    except KeyboardInterrupt:
        err("error: interrupted")
        return ExitCode.INTERRUPTED
    except Exception as error:  # a bug: one line still, the traceback with -v
        log.debug("traceback:", exc_info=True)
        err(f"error: {UnexpectedError.wrap(error)} (a bug to report; -v shows its traceback)")
        return ExitCode.FAILED
    finally:
        context.close()


def run() -> None:
    sys.exit(main())
