"""Daemon benchmark (issue 5, item 8): change-to-commit latency, and the cost of a triggered run.

    .venv/bin/python bench/daemon.py [--files 100000] [--changes 20] [--targets file,sftp,file+sftp] [--reruns 5]

One run of this script, on one machine, side by side for each target:

(a) `watcher run` (BACKUP_DEBOUNCE_SECONDS=1, BACKUP_MAX_DELAY_SECONDS=10, its own state dir) over a
    tree of small files; once its start-up snapshot is committed, `--changes` times: rewrite one
    random file, then wait for the daemon's "snapshot ... saved" line. Latency = ctime of the
    repository's `snapshots/<id>` file (set by the rename that commits it; on the sftp target the
    server's folder is on this disk) minus the mtime of the rewritten file: both are the kernel's
    clock, so no polling delay is added. Every snapshot is then checked to hold the new content.
    The cost of each triggered run: its wall time (from the daemon's "run started" line to its
    "saved" line, as this script receives them: connect, index, scan, upload, commit), the
    duration the daemon logs ("in X s": the scan and commit only), and the daemon's CPU time
    (user + system, the kernel's per-process CPU clock) from just before the write to just after the
    commit, which also holds the event handling and the debounce wait.
    `file+sftp` is one daemon with two targets (BACKUP_TARGET=file://…, BACKUP_TARGET_2=sftp://…): the
    latency is that of the SECOND target (its snapshot file's ctime; the script waits for the daemon's
    "target 2 (…): snapshot … saved" line), the first target's is noted beside it, and the daemon's CPU per
    triggered run is compared with a one-target `file` daemon's in the same run of the script (run first,
    for (a) only, when `file` is not asked for itself). No (b) for it.
(b) After the daemon is stopped, `--reruns` rounds of: rewrite one random file, then a full-scan
    `watcher backup` with the daemon's state dir; rewrite another, then `restic backup` of the same
    tree to the same server (its own repository next to watcher's), which finds its parent
    snapshot by host and path. Wall time and CPU time of each process (`wait4`: the process and
    the children it waited for, so restic's `ssh`), plus, on sftp, the CPU of the server's sshd
    processes (the listener's reaped children).

The sftp server is a real OpenSSH sshd on 127.0.0.1, started as the test fixture does
(tests/fixtures/sftp.py: tests/servers/sshd/sshd_config, the `watcher-sftp` account made by
tests/servers/sftp_user.sh). watcher logs in with that account's password; restic runs
`ssh` with a key made for the run. Needs root, /usr/sbin/sshd and restic.

Prints the tables and writes them, with the method and the machine, into the "Daemon" section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import hashlib
import json
import math
import os
import platform
import pwd
import queue
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test fixture's sshd helpers, and watcher itself

from bench.report import write_section  # noqa: E402
from tests.fixtures.sftp import (  # noqa: E402
    SFTP_TEST_PASSWORD,
    SFTP_TEST_USER,
    SSHD,
    _keygen,
    _LocalSshd,
    local_sshd,
)
from watcher.backends.local import LocalBackend  # noqa: E402
from watcher.repository import Repository  # noqa: E402
from watcher.snapshot import decode_snapshot  # noqa: E402
from watcher.watch import file_system_type  # noqa: E402

WATCHER = ROOT / ".venv" / "bin" / "watcher"
DEBOUNCE = 1.0
MAX_DELAY = 10.0
FILES_PER_FOLDER = 100
STARTUP_TIMEOUT = 1800.0
CHANGE_TIMEOUT = 60.0
SETTLE = 0.3  # after a commit, before reading the daemon's CPU time: the run's report is logged by then
HOST = "bench-host"
RESTIC_PASSWORD = "bench-only"
TICK = os.sysconf("SC_CLK_TCK")

# A daemon with several targets prefixes each target's outcome with "target N (URL): "; one with a single
# target may or may not.
SAVED = re.compile(r"(?:target (?P<number>\d) \(.*?\): )?snapshot (?P<id>\S+) saved: .* in (?P<seconds>[0-9.]+) s"
                   r"( \(.*\))?$")
STARTED = re.compile(r"run started \((.*)\)")
NO_CHANGE = re.compile(r"no change since snapshot")


# -- the data set ------------------------------------------------------------------------------


def tree_path(root: Path, index: int) -> Path:
    """File `index` of the tree: 100 files per folder, folders three levels deep (a/b/c)."""
    folder = index // FILES_PER_FOLDER
    return root / f"a{folder // 100:02d}" / f"b{folder // 10 % 10}" / f"c{folder % 10}" / f"f{index:06d}.dat"


def generate_tree(root: Path, files: int, seed: int = 1) -> int:
    """`files` small files (64 B to 4 KiB, incompressible, seeded) in nested folders; return bytes."""
    rng = random.Random(seed)
    total = 0
    for index in range(files):
        path = tree_path(root, index)
        if index % FILES_PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(64, 4096))
        path.write_bytes(data)
        total += len(data)
    return total


def rewrite(path: Path, rng: random.Random) -> tuple[bytes, int]:
    """New random content of the same size; returns it and the file's mtime after the write (ns)."""
    data = rng.randbytes(path.stat().st_size)
    with open(path, "wb") as handle:
        handle.write(data)
    return data, os.stat(path).st_mtime_ns


# -- measuring ---------------------------------------------------------------------------------


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own user+system, reaped children's user+system) CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK


_LIBC = ctypes.CDLL(None, use_errno=True)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a live process and all its threads, finished ones included, to the
    nanosecond: the kernel's per-process CPU clock. /proc's clock ticks (10 ms) are too coarse for a
    triggered run of a few tens of ms, and for the ratio of two such runs."""
    clock = ctypes.c_int()
    if _LIBC.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        raise OSError(ctypes.get_errno(), f"no CPU clock for process {pid}")
    return time.clock_gettime_ns(clock.value) / 1e9


def machine_cpu() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat, all cores)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def own_cpu() -> float:
    """CPU seconds of this script and every child it reaped (daemons, backups, restic, sshd)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(item.ru_utime + item.ru_stime for item in usage)


@dataclass
class Timed:
    wall: float
    cpu: float
    returncode: int
    stdout: str
    stderr: str


def timed_run(command: list[str], env: dict[str, str], cwd: Path) -> Timed:
    """Run a process; its wall time and its CPU time (with the children it waited for) from wait4."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [threading.Thread(target=lambda s=stream, c=chunks: c.append(s.read()), daemon=True)
               for stream, chunks in ((process.stdout, out_chunks), (process.stderr, err_chunks))]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    for reader in readers:
        reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    return Timed(wall, usage.ru_utime + usage.ru_stime, process.returncode,
                 b"".join(out_chunks).decode(errors="replace"), b"".join(err_chunks).decode(errors="replace"))


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (statistics.quantiles, inclusive)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def p95(values: list[float]) -> float:
    return percentile(values, 0.95) if values else math.nan


# -- the sftp server ---------------------------------------------------------------------------


@dataclass
class Server:
    """The local sshd, its served folder (under the account's home) and the client files."""

    sshd: _LocalSshd
    served: Path
    scratch: Path
    known_hosts: Path
    restic_key: Path

    @property
    def port(self) -> int:
        return self.sshd.port

    def cpu(self) -> float:
        """CPU of every finished connection (the listener reaps its per-connection processes)."""
        assert self.sshd.process is not None
        return proc_cpu(self.sshd.process.pid)[1]


@contextlib.contextmanager
def sftp_server(work: Path) -> Iterator[Server]:
    if os.geteuid() != 0 or not SSHD.exists():
        raise SystemExit("the sftp target needs root and /usr/sbin/sshd (apt-get install openssh-server)")
    try:
        pwd.getpwnam(SFTP_TEST_USER)
    except KeyError:
        raise SystemExit(f"no user {SFTP_TEST_USER}: run tests/servers/sftp_user.sh as root") from None
    client = work / "ssh-client"
    client.mkdir(mode=0o700)
    restic_key = _keygen(client / "id_ed25519", "ed25519")
    with local_sshd(client, [restic_key], prefix=".watcher-bench-") as started:
        yield Server(started.process, started.scratch.parent, started.scratch, started.known_hosts, restic_key)


# -- the daemon --------------------------------------------------------------------------------


class Daemon:
    """`watcher run` with its stdout read line by line, each line stamped when it arrives."""

    def __init__(self, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = open(log, "a", encoding="utf-8")  # noqa: SIM115 (closed in stop)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.process = subprocess.Popen([str(WATCHER), "run"], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            now = time.perf_counter()
            self.log.write(line)
            self.log.flush()
            self.lines.put((now, line.rstrip("\n")))

    def wait_for(self, pattern: re.Pattern[str], timeout: float,
                 seen: Callable[[float, str], None] = lambda at, line: None,
                 accept: Callable[[re.Match[str]], bool] = lambda match: True) -> tuple[float, re.Match[str]]:
        """The next line matching `pattern` that `accept` takes (and when it arrived); every line read is
        shown to `seen`."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"no line matching {pattern.pattern!r} within {timeout:g} s (see {self.log.name})")
            try:
                at, line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if self.process.poll() is not None:
                    raise RuntimeError(f"watcher run exited ({self.process.returncode}); see {self.log.name}") from None
                continue
            seen(at, line)
            if " ERROR " in line or "backup failed" in line:
                raise RuntimeError(f"the daemon failed: {line}")
            match = pattern.search(line)
            if match and accept(match):
                return at, match

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.reader.join(timeout=5)
        self.log.close()


# -- one target ------------------------------------------------------------------------------


@dataclass
class TargetResult:
    target: str
    startup_seconds: float = math.nan
    watch_mode: str = "?"
    latency: list[float] = field(default_factory=list)
    latency_lines: list[float] = field(default_factory=list)
    first_latency: list[float] = field(default_factory=list)  # a two-target daemon's first target
    trig_wall: list[float] = field(default_factory=list)
    trig_logged: list[float] = field(default_factory=list)
    trig_cpu: list[float] = field(default_factory=list)
    trig_server_cpu: list[float] = field(default_factory=list)
    full_wall: list[float] = field(default_factory=list)
    full_logged: list[float] = field(default_factory=list)
    full_cpu: list[float] = field(default_factory=list)
    full_server_cpu: list[float] = field(default_factory=list)
    restic_first_seconds: float = math.nan
    restic_wall: list[float] = field(default_factory=list)
    restic_logged: list[float] = field(default_factory=list)
    restic_cpu: list[float] = field(default_factory=list)
    restic_server_cpu: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, tree: Path, files: int, server: Server | None) -> None:
        self.args = args
        self.work = work
        self.tree = tree
        self.files = files
        self.server = server
        self.rng = random.Random(args.seed)

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def random_file(self) -> Path:
        return tree_path(self.tree, self.rng.randrange(self.files))

    def server_cpu(self) -> float:
        return self.server.cpu() if self.server is not None else 0.0

    def watcher_env(self, target: str) -> dict[str, str]:
        """The daemon's variables: `target` is file, sftp, or file+sftp (two targets, in that order)."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.work),
            "LANG": "C.UTF-8",
            "BACKUP_SOURCES": str(self.tree),
            "BACKUP_STATE_DIR": str(self.work / f"state-{target}"),
            "BACKUP_HOST": HOST,
            "BACKUP_DEBOUNCE_SECONDS": f"{DEBOUNCE:g}",
            "BACKUP_MAX_DELAY_SECONDS": f"{MAX_DELAY:g}",
            "BACKUP_RESCAN_SECONDS": "3600",
            "BACKUP_RETRIES": "1",
            "BACKUP_ENCRYPTION": "none",  # format 1, as measured so far (issue 10 measures encryption)
            "MAIL_ON": "never",
        }
        for number, (kind, repo) in enumerate(zip(target.split("+"), self.daemon_repos(target), strict=True), 1):
            variable = "BACKUP_TARGET" if number == 1 else f"BACKUP_TARGET_{number}"
            if kind == "file":
                env[variable] = f"file://{repo}"
            else:
                assert self.server is not None
                env[variable] = f"sftp://{SFTP_TEST_USER}@127.0.0.1:{self.server.port}{repo}"
                env[f"{variable}_PASSWORD"] = SFTP_TEST_PASSWORD
                env["BACKUP_SSH_KNOWN_HOSTS"] = str(self.server.known_hosts)
        return env

    def restic_command(self, target: str, repo: Path) -> list[str]:
        command = ["restic", "--cache-dir", str(self.work / f"restic-cache-{target}")]
        if target == "file":
            return [*command, "-r", str(repo)]
        assert self.server is not None
        ssh = (f"ssh -F /dev/null -p {self.server.port} -i {self.server.restic_key} -o IdentitiesOnly=yes "
               f"-o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={self.server.known_hosts} "
               f"{SFTP_TEST_USER}@127.0.0.1 -s sftp")
        return [*command, "-o", f"sftp.command={ssh}", "-r", f"sftp:127.0.0.1:{repo}"]

    def daemon_repos(self, target: str) -> list[Path]:
        """watcher's repositories, one per target of the daemon: local folders, or folders on the sftp
        server's disk (the two-target daemon has its own, beside the one-target daemons')."""
        if target == "file":
            return [self.work / "repo-file"]
        assert self.server is not None
        if target == "sftp":
            return [self.server.scratch / "watcher-repo"]
        return [self.work / "repo-two-targets", self.server.scratch / "watcher-repo-two-targets"]

    def repo_paths(self, target: str) -> tuple[Path, Path]:
        """watcher's and restic's repositories (one-target daemons only)."""
        restic = self.work / "restic-file" if target == "file" else self.server_scratch() / "restic-repo"
        return self.daemon_repos(target)[0], restic

    def server_scratch(self) -> Path:
        assert self.server is not None
        return self.server.scratch

    # (a) -------------------------------------------------------------------------------------

    def latency(self, target: str, result: TargetResult) -> None:
        repos = self.daemon_repos(target)
        repo = repos[-1]  # where the latency is measured: the last target, the one a run serves last
        env = self.watcher_env(target)

        def on_last_target(match: re.Match[str]) -> bool:
            if match["number"] is None and len(repos) > 1:
                raise RuntimeError("the daemon does not name the target of its 'saved' line: it does not serve "
                                   "several targets (a version before issue 8?)")
            return match["number"] in (None, str(len(repos)))

        self.say(f"{target}: starting watcher run; its start-up run backs up the whole tree")
        daemon = Daemon(env, self.work, self.work / f"daemon-{target}.log")
        profiler: subprocess.Popen[bytes] | None = None
        try:
            def note_mode(at: float, line: str) -> None:
                if "watching " in line and line.endswith(")"):
                    result.watch_mode = line.rsplit("(", 1)[1].rstrip(")")

            started_at, _ = daemon.wait_for(STARTED, STARTUP_TIMEOUT, note_mode)
            saved_at, match = daemon.wait_for(SAVED, STARTUP_TIMEOUT, note_mode, on_last_target)
            result.startup_seconds = saved_at - started_at
            self.say(f"{target}: start-up snapshot {match['id']} in {result.startup_seconds:.1f} s "
                     f"(watching: {result.watch_mode})")
            time.sleep(1.0)
            if self.args.profile:
                profiler = self.start_profiler(target, daemon.process.pid)
            checks: list[tuple[str, Path, bytes]] = []
            first_checks: list[tuple[str, Path, bytes]] = []
            for number in range(1, self.args.changes + 1):
                path = self.random_file()
                first_before = set(os.listdir(repos[0] / "snapshots"))
                cpu_before, server_before = process_cpu(daemon.process.pid), self.server_cpu()
                written_at = time.perf_counter()
                data, mtime_ns = rewrite(path, self.rng)
                run_started: list[float] = []

                def note_start(at: float, line: str, run_started: list[float] = run_started) -> None:
                    if STARTED.search(line):
                        run_started.append(at)

                line_at, match = daemon.wait_for(SAVED, CHANGE_TIMEOUT, note_start, on_last_target)
                snapshot_id = match["id"]
                time.sleep(SETTLE)
                cpu_after, server_after = process_cpu(daemon.process.pid), self.server_cpu()
                committed_ns = os.stat(repo / "snapshots" / snapshot_id).st_ctime_ns
                logged = logged_duration(repo, snapshot_id)
                latency = (committed_ns - mtime_ns) / 1e9
                result.latency.append(latency)
                result.latency_lines.append(line_at - written_at)
                result.trig_wall.append(line_at - run_started[0] if run_started else math.nan)
                result.trig_logged.append(logged)
                result.trig_cpu.append(cpu_after - cpu_before)
                result.trig_server_cpu.append(server_after - server_before)
                checks.append((snapshot_id, path, data))
                if len(repos) > 1:  # the first target's snapshot of this change: its one new file, whatever the log
                    [first_id] = set(os.listdir(repos[0] / "snapshots")) - first_before
                    first_ns = os.stat(repos[0] / "snapshots" / first_id).st_ctime_ns
                    result.first_latency.append((first_ns - mtime_ns) / 1e9)
                    first_checks.append((first_id, path, data))
                self.say(f"{target}: change {number:2d}: committed {latency:.3f} s after the write "
                         f"(run {result.trig_wall[-1]:.3f} s, logged {logged:.3f} s, "
                         f"daemon CPU {result.trig_cpu[-1]:.3f} s)")
                time.sleep(self.rng.uniform(0.2, 0.6))  # the next change comes at a random phase of the tick
        finally:
            daemon.stop()
            if profiler is not None:
                profiler.wait(timeout=60)
        if daemon.process.returncode != 0:
            raise RuntimeError(f"watcher run exited with {daemon.process.returncode}")
        if profiler is not None:
            print(summarize_profile(self.args.profile / f"daemon-{target}.txt", self.args.changes), flush=True)
        self.verify(repo, checks)
        if len(repos) > 1:
            if len(first_checks) != len(checks):
                raise RuntimeError(f"{target}: {len(first_checks)} snapshots of target 1 for {len(checks)} changes")
            self.verify(repos[0], first_checks)
        self.say(f"{target}: each of the {len(checks)} snapshots holds its change")

    def start_profiler(self, target: str, pid: int) -> subprocess.Popen[bytes]:
        """py-spy on the daemon from now until it exits: the triggered runs, not the start-up scan."""
        py_spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
        self.args.profile.mkdir(parents=True, exist_ok=True)
        output = self.args.profile / f"daemon-{target}.txt"
        profiler = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "250", "--threads",
                                     "--format", "raw", "--output", str(output)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        time.sleep(1.0)  # attached before the first change
        return profiler

    def verify(self, repo: Path, checks: list[tuple[str, Path, bytes]]) -> None:
        """Each snapshot holds the content written just before it (read straight from the folder)."""
        repository = Repository(LocalBackend(repo), None)
        repository.open()
        repository.load_index()
        try:
            for snapshot_id, path, data in checks:
                snapshot = decode_snapshot(snapshot_id, (repo / "snapshots" / snapshot_id).read_bytes())
                if snapshot.summary.changed != 1 or snapshot.summary.new or snapshot.summary.removed:
                    raise RuntimeError(f"snapshot {snapshot_id}: expected one changed file, got {snapshot.summary}")
                nodes = repository.load_tree(snapshot.tree)
                node = None
                for part in path.parts[1:]:
                    node = next((entry for entry in nodes if entry.name == part), None)
                    if node is None:
                        raise RuntimeError(f"snapshot {snapshot_id} lacks {path}")
                    if node.kind == "dir":
                        nodes = repository.load_tree(node.subtree or "")
                if node is None or node.content != (hashlib.sha256(data).hexdigest(),):
                    raise RuntimeError(f"snapshot {snapshot_id} does not hold the new content of {path}")
        finally:
            repository.close()

    # (b) -------------------------------------------------------------------------------------

    def costs(self, target: str, result: TargetResult) -> None:
        repo, restic_repo = self.repo_paths(target)
        env = self.watcher_env(target)
        restic = self.restic_command(target, restic_repo)
        restic_env = {"PATH": env["PATH"], "HOME": str(self.work), "RESTIC_PASSWORD": RESTIC_PASSWORD,
                      "GOGC": os.environ.get("GOGC", "100")}
        initialised = timed_run([*restic, "init"], restic_env, self.work)
        if initialised.returncode != 0:
            raise RuntimeError(f"restic init failed: {initialised.stderr.strip()}")
        self.say(f"{target}: restic's first backup of the tree")
        first = self.restic_backup(restic, restic_env)
        result.restic_first_seconds = first[0].wall
        for round_number in range(1, self.args.reruns + 1):
            # One file changes, then each tool backs it up (in alternating order): both see one changed file.
            rewrite(self.random_file(), self.rng)
            time.sleep(1.0)  # older than the racy window of watcher's file cache, as a daemon's change would be
            order = ("watcher", "restic") if round_number % 2 else ("restic", "watcher")
            for tool in order:
                server_before = self.server_cpu()
                if tool == "watcher":
                    full = timed_run([str(WATCHER), "backup"], env, self.work)
                    match = SAVED.search(full.stdout.strip())
                    if full.returncode != 0 or match is None or " 1 changed" not in full.stdout:
                        raise RuntimeError(f"watcher backup: {full.returncode} {full.stdout} {full.stderr}")
                    time.sleep(SETTLE)
                    result.full_server_cpu.append(self.server_cpu() - server_before)
                    result.full_wall.append(full.wall)
                    result.full_logged.append(logged_duration(repo, match["id"]))
                    result.full_cpu.append(full.cpu)
                else:
                    rerun, summary = self.restic_backup(restic, restic_env)
                    if summary.get("files_changed") != 1 or summary.get("files_new"):
                        raise RuntimeError(f"restic re-run: expected one changed file, got {summary}")
                    time.sleep(SETTLE)
                    result.restic_server_cpu.append(self.server_cpu() - server_before)
                    result.restic_wall.append(rerun.wall)
                    result.restic_logged.append(float(summary.get("total_duration", math.nan)))
                    result.restic_cpu.append(rerun.cpu)
            self.say(f"{target}: round {round_number}: watcher full scan {full.wall:.2f} s (CPU {full.cpu:.2f} s), "
                     f"restic re-run {rerun.wall:.2f} s (CPU {rerun.cpu:.2f} s)")

    def restic_backup(self, restic: list[str], env: dict[str, str]) -> tuple[Timed, dict[str, object]]:
        run = timed_run([*restic, "backup", "--json", "--host", HOST, str(self.tree)], env, self.work)
        summaries = [json.loads(line) for line in run.stdout.splitlines() if '"summary"' in line]
        if run.returncode != 0 or not summaries:
            raise RuntimeError(f"restic backup failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
        return run, summaries[-1]


def logged_duration(repo: Path, snapshot_id: str) -> float:
    """The run's duration as the snapshot records it (ms; the log line rounds to 0.1 s)."""
    return decode_snapshot(snapshot_id, (repo / "snapshots" / snapshot_id).read_bytes()).summary.duration_seconds


def summarize_profile(raw: Path, runs: int, top: int = 15) -> str:
    """The main thread's functions by inclusive samples (only busy samples: py-spy without --idle)."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        if "MainThread" not in thread and "(python)" not in thread:
            continue
        samples = int(count)
        total += samples
        functions = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        for function in set(functions):
            inclusive[function] += samples
        if functions:
            own[functions[-1]] += samples
    out = [f"profile {raw} (main thread, {total} busy samples at 250 Hz = {total / 250 / max(runs, 1):.3f} s "
           f"per triggered run):", "  inclusive:"]
    out += [f"  {n / total:6.1%}  {function}" for function, n in inclusive.most_common(top)] if total else []
    out.append("  self:")
    out += [f"  {n / total:6.1%}  {function}" for function, n in own.most_common(top)] if total else []
    return "\n".join(out)


# -- report ----------------------------------------------------------------------------------


def machine_facts(tree_bytes: int, files: int, tree: Path) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    memory = "?"
    with contextlib.suppress(OSError, StopIteration):
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        memory = f"{kib / 2**20:.0f} GiB"
    fs = file_system_type(tree)
    versions = {
        "restic": subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.split()[1],
        "OpenSSH": subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.split(",")[0],
    }
    from importlib.metadata import version

    commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
                            text=True).stdout.strip()[:72]
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "watcher"], capture_output=True,
                           text=True).stdout.strip()
    return [
        f"- code: commit {commit or '?'}{' with uncommitted changes in watcher/' if dirty else ''}",
        f"- {os.cpu_count()} cores ({cpu}), {memory} RAM, Linux {platform.release()}, "
        f"tree and repositories on {fs} (one local disk), sshd on 127.0.0.1",
        f"- Python {platform.python_version()}, watcher {version('watcher-backup')}, watchdog {version('watchdog')}, "
        f"paramiko {version('paramiko')}, restic {versions['restic']}, {versions['OpenSSH']}",
        f"- tree: {files:,} files of 64 B to 4 KiB ({tree_bytes / 2**20:.0f} MiB) in "
        f"{math.ceil(files / FILES_PER_FOLDER):,} folders of {FILES_PER_FOLDER}, three levels deep",
    ]


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def ratio(slow: list[float], fast: list[float]) -> float:
    top, bottom = med(slow), med(fast)
    return top / bottom if bottom > 0 else math.inf


CPU_GOAL = 2.2  # a two-target daemon's CPU per triggered run, at most this many times one target's


def shown(target: str) -> str:
    """A target column's text: `file://`, or for a two-target daemon what it serves and where it is measured."""
    if "+" not in target:
        return f"`{target}://`"
    kinds = target.split("+")
    return " + ".join(f"`{kind}://`" for kind in kinds) + f" (one daemon; target {len(kinds)}, `{kinds[-1]}://`)"


def tables(results: list[TargetResult], changes: int, reruns: int) -> tuple[list[str], list[str]]:
    """(lines, verdicts): the tables in Markdown (the two-target one when such a daemon was measured)."""
    goal = DEBOUNCE + 1.0
    lines = [
        f"**Change to commit** ({changes} one-file changes per target, debounce {DEBOUNCE:g} s; seconds):",
        "",
        "| target | median | p95 | min | max | target: median < debounce + 1 s |",
        "|---|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for r in results:
        met = med(r.latency) < goal
        verdicts.append(f"{r.target}: change-to-commit median {med(r.latency):.2f} s "
                        f"{'<' if met else '>='} {goal:g} s: {'met' if met else 'NOT met'}")
        lines.append(f"| {shown(r.target)} | {fmt(med(r.latency))} | {fmt(p95(r.latency))} | {fmt(min(r.latency))} | "
                     f"{fmt(max(r.latency))} | {'met' if met else '**not met**'} |")
    lines += [
        "",
        f"**Cost of one run after a one-file change** (triggered: {changes} runs; full scan and restic: {reruns} "
        "runs each; seconds, median / p95):",
        "",
        "| target | run | wall | logged duration | CPU (client) | CPU (sshd) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        rows = (
            ("triggered run (`watcher run`)", r.trig_wall, r.trig_logged, r.trig_cpu, r.trig_server_cpu),
            ("full scan (`watcher backup`)", r.full_wall, r.full_logged, r.full_cpu, r.full_server_cpu),
            ("`restic backup` re-run", r.restic_wall, r.restic_logged, r.restic_cpu, r.restic_server_cpu),
        )
        for name, wall, logged, cpu, server in rows:
            if not wall:
                continue  # not measured for this target (a two-target daemon, or a file daemon there only for it)
            server_text = f"{fmt(med(server), 2)} / {fmt(p95(server), 2)}" if "sftp" in r.target else "-"
            lines.append(f"| {shown(r.target)} | {name} | {fmt(med(wall))} / {fmt(p95(wall))} | "
                         f"{fmt(med(logged))} / {fmt(p95(logged))} | {fmt(med(cpu), 2)} / {fmt(p95(cpu), 2)} | "
                         f"{server_text} |")
    compared = [r for r in results if r.restic_wall]
    if compared:
        lines += [
            "",
            "**Ratios of medians** (how many times cheaper the triggered run is):",
            "",
            "| target | restic re-run / triggered, wall | restic / triggered, CPU | full scan / triggered, wall "
            "| full scan / triggered, CPU | target: restic at least 20x triggered |",
            "|---|---:|---:|---:|---:|---|",
        ]
    for r in compared:
        wall, cpu = ratio(r.restic_wall, r.trig_wall), ratio(r.restic_cpu, r.trig_cpu)
        met = wall >= 20 and cpu >= 20
        verdicts.append(f"{r.target}: restic re-run / triggered run = {wall:.1f}x wall, {cpu:.1f}x CPU "
                        f"(target 20x): {'met' if met else 'NOT met'}")
        lines.append(f"| `{r.target}://` | {wall:.1f}x | {cpu:.1f}x | {ratio(r.full_wall, r.trig_wall):.1f}x | "
                     f"{ratio(r.full_cpu, r.trig_cpu):.1f}x | {'met' if met else '**not met**'} |")
    lines += two_target_table(results, verdicts)
    lines += ["", "Also measured (single runs, for scale):", ""]
    for r in results:
        restic = "" if math.isnan(r.restic_first_seconds) else \
            f"restic's first backup {fmt(r.restic_first_seconds, 1)} s; "
        lines.append(f"- {shown(r.target)}: start-up snapshot of the whole tree by `watcher run` "
                     f"{fmt(r.startup_seconds, 1)} s; {restic}change-to-commit measured from the daemon's stdout "
                     f"line instead of file times: median "
                     f"{fmt(med(r.latency_lines))} s; watch mode: {r.watch_mode}")
    return lines, verdicts


def two_target_table(results: list[TargetResult], verdicts: list[str]) -> list[str]:
    """A two-target daemon beside the one-target `file` daemon of the same run (appends its verdicts)."""
    one = next((r for r in results if r.target == "file"), None)
    lines: list[str] = []
    for r in (r for r in results if "+" in r.target and one is not None):
        assert one is not None
        cpu = ratio(r.trig_cpu, one.trig_cpu)
        latency_met, cpu_met = med(r.latency) < DEBOUNCE + 1.0, cpu <= CPU_GOAL
        if not lines:
            lines = [
                "",
                "**Two targets in one daemon** (the same one-file changes; seconds, median / p95; CPU of the daemon "
                "per triggered run):",
                "",
                "| daemon | change to commit, first target | change to commit, last target | CPU per triggered run "
                f"| CPU / one target's | target: last commit < debounce + 1 s, CPU at most {CPU_GOAL:g}x |",
                "|---|---:|---:|---:|---:|---|",
                f"| {shown(one.target)} alone | - | {fmt(med(one.latency))} / {fmt(p95(one.latency))} | "
                f"{fmt(med(one.trig_cpu))} / {fmt(p95(one.trig_cpu))} | 1.00x | - |",
            ]
        lines.append(f"| {shown(r.target)} | {fmt(med(r.first_latency))} / {fmt(p95(r.first_latency))} | "
                     f"{fmt(med(r.latency))} / {fmt(p95(r.latency))} | {fmt(med(r.trig_cpu))} / "
                     f"{fmt(p95(r.trig_cpu))} | {cpu:.2f}x | "
                     f"{'met' if latency_met and cpu_met else '**not met**'} |")
        verdicts.append(f"{r.target}: daemon CPU per triggered run {med(r.trig_cpu):.3f} s = {cpu:.2f}x the one-target "
                        f"file daemon's {med(one.trig_cpu):.3f} s (target at most {CPU_GOAL:g}x): "
                        f"{'met' if cpu_met else 'NOT met'}")
    return lines


METHOD = """\
Method (`bench/daemon.py`; one run of the script measures every row below, side by side):

- **Change to commit.** `watcher run` with `BACKUP_DEBOUNCE_SECONDS=1`, `BACKUP_MAX_DELAY_SECONDS=10` and its
  own `BACKUP_STATE_DIR` watches the tree; after its start-up snapshot, one random file at a time is rewritten
  (same size, new random bytes) and the script waits for the daemon's `snapshot … saved` line. The latency is
  the ctime of `snapshots/<id>` in the repository (set by the rename that commits the snapshot; the sftp
  server's folder is on the same disk) minus the mtime of the rewritten file: both from the kernel's clock, no
  polling delay. Each snapshot is then read back and must hold exactly that file's new content (one changed
  file). Between changes the script waits 0.2-0.6 s at random so a change lands at any phase of the daemon's
  1 s tick.
- **Cost of a run.** *Triggered run*: wall time from the daemon's `run started` line to its `saved` line as
  the script receives them (connect, read the index, scan the changed path, upload, commit); *logged
  duration* is the run's duration as its snapshot records it (the `in X s` of the log line, to the ms: scan,
  upload and commit, without connecting and reading the index); *CPU* is the daemon process's
  user + system time (all its threads, from the kernel's per-process CPU clock, to the nanosecond) from just
  before the write to {settle} s after the commit, so it also holds the event handling and the idle ticks of
  the debounce wait. *Full scan* and *restic*: after the daemon is stopped
  and restic has made its first backup of the tree, each round rewrites one random file, waits 1 s, then
  runs, in alternating order, `watcher backup` with the daemon's state dir (its file cache is warm; wall and
  CPU of the whole process, Python start-up included) and `restic backup` of the same tree to its own
  repository on the same target (a local folder, or the same sshd through `ssh -s sftp` with a key), which
  finds its parent snapshot by host and path; wall and CPU of restic and its `ssh` child (`wait4`), logged
  duration = restic's `total_duration`. Each run must report exactly one changed file. *CPU (sshd)*: CPU
  of the server's connection processes, read from the sshd listener's reaped children.
- **Two targets** (`--targets file+sftp`, when measured): one daemon with `BACKUP_TARGET=file://…` and
  `BACKUP_TARGET_2=sftp://…` gets the same one-file changes; change to commit is measured on the second
  target (its `snapshots/<id>` ctime, the script waiting for the daemon's `target 2 (…): snapshot … saved`
  line), the first target's beside it, and every snapshot of both is read back. Its CPU per triggered run is
  divided by that of the one-target `file` daemon measured in the same run of the script.
- Figures are medians and 95th percentiles (linear interpolation); ratios are ratios of medians.
  The restic target counts as met when the triggered run is 20 times cheaper in both wall and CPU time.
"""


def write_results(path: Path | None, facts: list[str], table: list[str], verdicts: list[str], command: str) -> None:
    text = "\n".join([
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} with `{command}`.",
        "",
        *facts,
        "",
        METHOD.format(settle=SETTLE),
        *table,
        "",
        "Targets:",
        "",
        *[f"- {verdict}" for verdict in verdicts],
        "",
        "Where a triggered run's time goes: `.venv/bin/python bench/daemon.py --profile DIR` runs py-spy on the "
        "daemon during the changes and prints the main thread's functions by share of samples (its figures "
        "are slowed by the profiler and are not results).",
        "",
    ])
    if path is None:
        write_section("## Daemon", text)
    else:
        path.write_text(text)


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000, help="files in the tree (default 100000)")
    parser.add_argument("--changes", type=int, default=20, help="one-file changes per target (default 20)")
    parser.add_argument("--targets", default="file,sftp",
                        help="comma-separated: file, sftp, file+sftp (one daemon, two targets; it brings a one-target "
                             "file daemon for comparison) (default file,sftp)")
    parser.add_argument("--reruns", type=int, default=5, help="full-scan and restic runs per target (default 5)")
    parser.add_argument("--seed", type=int, default=5, help="seed of the file choices and new contents (default 5)")
    parser.add_argument("--tree", type=Path, metavar="DIR",
                        help="keep the tree in DIR across runs: made there if DIR does not exist, else reused "
                             "(same --files); default: made in a temporary folder and removed")
    parser.add_argument("--output", type=Path, default=None,
                        help="results file (default: the Daemon section of docs/BENCHMARKS.md)")
    parser.add_argument("--no-output", action="store_true", help="print only, write no results file")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run py-spy on the daemon during the changes (raw stacks into DIR, summary printed); "
                             "it slows the daemon: the figures of such a run are not for the results")
    args = parser.parse_args()
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    if not targets or set(targets) - {"file", "sftp", "file+sftp"}:
        parser.error("--targets takes file, sftp and/or file+sftp")
    with_costs = [target for target in targets if "+" not in target]  # (b) is for one-target daemons
    if "file+sftp" in targets and "file" not in targets:
        targets.insert(0, "file")  # the one-target daemon it is compared with, (a) only
    if shutil.which("restic") is None:
        parser.error("restic is not installed (apt-get install restic)")

    command = " ".join([".venv/bin/python bench/daemon.py", *sys.argv[1:]])

    if args.profile:
        args.no_output = True
    started = time.perf_counter()
    machine_before, own_before = machine_cpu(), own_cpu()
    load_before = Path("/proc/loadavg").read_text().split()[0]
    work = Path(tempfile.mkdtemp(prefix="watcher-bench-daemon-", dir="/tmp"))
    try:
        tree = args.tree.absolute() if args.tree else work / "tree"
        if not tree.exists():
            print(f"generating {args.files:,} files in {tree} ...", flush=True)
            tree_started = time.perf_counter()
            tree_bytes = generate_tree(tree, args.files)
            print(f"generated {tree_bytes / 2**20:.0f} MiB in {time.perf_counter() - tree_started:.0f} s", flush=True)
        else:
            tree_bytes = sum(path.stat().st_size for path in tree.rglob("*.dat"))
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(sftp_server(work)) if any("sftp" in target for target in targets) else None
            bench = Bench(args, work, tree, args.files, server)
            results = []
            for target in targets:
                result = TargetResult(target)
                bench.latency(target, result)
                if target in with_costs:
                    bench.costs(target, result)
                results.append(result)
        elapsed = time.perf_counter() - started
        others = max(0.0, (machine_cpu() - machine_before) - (own_cpu() - own_before))
        facts = machine_facts(tree_bytes, args.files, tree)
        facts.append(f"- other processes on the machine during the run: {others:.0f} CPU-seconds in {elapsed:.0f} s "
                     f"({others / elapsed / (os.cpu_count() or 1):.0%} of the {os.cpu_count()} cores; "
                     f"load average {load_before} at the start)")
        table, verdicts = tables(results, args.changes, args.reruns)
        print()
        print("\n".join(facts))
        print()
        print("\n".join(table))
        print()
        print("\n".join(verdicts))
        if not args.no_output:
            write_results(args.output, facts, table, verdicts, command)
            print(f"\nwritten to {args.output or 'docs/BENCHMARKS.md (Daemon)'}")
        print(f"total time {time.perf_counter() - started:.0f} s")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)  # tree, repositories, caches; the sftp ones go with the server


if __name__ == "__main__":
    sys.exit(main())
