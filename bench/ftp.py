"""Benchmark watcher against `rclone copy` and `lftp mirror` over ftp:// and ftps://, side by side.

Two data sets, measured separately, both cut from one bench/dataset.py tree:

  many small files   its small/ folder: 5,000 files of 200 B to 40 kB in 500 folders
  large files        its large/ folder: 3 files of 64 MiB

and for each, over plain FTP and explicit FTPS, three operations:

  first backup       watcher: `watcher backup` into a new repository, with a new BACKUP_STATE_DIR;
                     rclone: `rclone copy DIR :ftp:PATH`; lftp: `mirror -R DIR PATH`
  1% changed re-run  after dataset.change_one_percent (50 small files rewritten, same sizes;
                     1 MiB appended to one large file): the same commands again (state kept)
  restore            watcher: `watcher restore latest --to EMPTY`; rclone: `rclone copy :ftp:PATH
                     EMPTY`; lftp: `mirror PATH EMPTY`; then `diff -r` against the source

watcher runs encrypted with `auto` compression (format 2) and, as a column of its own, with
BACKUP_ENCRYPTION=none (format 1): the cost of encryption alone (issue 10). Many tiny files against
duplicity: bench/ftp_tiny.py.

How: one plain and one explicit-TLS vsftpd on 127.0.0.1, started by this script with the tests'
config (tests/servers/vsftpd/vsftpd.conf, require_ssl_reuse=YES, the tests' account and a
throwaway CA from trustme, as tests/fixtures/ftp.py does), protocol logging off. Each round
starts from a fresh copy of the tree; within a step every tool runs in turn (the order rotates
between rounds) after an untimed `sync`. Reported: median wall time over `--repeat` rounds and
median peak memory (bench/run.py's `measure`: the larger of the process tree's summed RSS and the
largest process's max RSS). vsftpd is not counted. watcher runs from a compiled copy of watcher/
taken at the start, so edits made meanwhile do not mix into the figures. Prints the table, writes
the "FTP and FTPS" section of docs/BENCHMARKS.md (unless --no-docs) and the raw samples and
command log to bench/results/ftp-<time>.*.
Needs root (it installs what is missing and logs in the tests' account); about 8 minutes.

    .venv/bin/python bench/ftp.py [--repeat 3] [--small N] [--large N] [--large-mib N] [--no-docs]
    .venv/bin/python bench/ftp.py --repeat 1 --profile DIR   # watcher alone under py-spy: where its time goes
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
MiB = 1024 * 1024

sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402

CODE: list[Path] = []  # where code_snapshot copied watcher/ to
SETS = ("many small files", "large files")
FOLDER = {"many small files": "small", "large files": "large"}
STEPS = ("first backup", "1% changed re-run", "restore")
SCHEMES = ("ftp", "ftps")
TOOLS = ("watcher", "watcher, no encryption", "rclone", "lftp")
PEERS = ("rclone", "lftp")
REPOSITORY_PASSWORD = "bench-only"
# Peers' parallelism: rclone's own defaults (4 transfers, 8 checkers) with its connection pool
# capped at transfers + checkers + 1, as its manual asks; lftp mirror with 4 parallel transfers.
# Every connection count stays under the max_per_ip=20 of tests/servers/vsftpd/vsftpd.conf.
RCLONE_TRANSFERS, RCLONE_CHECKERS = 4, 8
RCLONE_CONCURRENCY = RCLONE_TRANSFERS + RCLONE_CHECKERS + 1
LFTP_PARALLEL = 4
PASSIVE_PORTS = 200  # the tests use 20; a peer with 13 connections opening 5,000 data connections wants more
# vsftpd's protocol and TLS debug logs (on in the tests' config, for the tests to read) cost the
# server a write per command; a production server has them off. Transfers stay logged (xferlog).
SERVER_OPTIONS = ["log_ftp_protocol=NO", "debug_ssl=NO", "max_per_ip=20", "max_clients=50"]
WORK_PER_ROUND = 18  # data set sizes written per round: its copy, 4 tools x 2 servers' copies and restores


def ensure_installed() -> None:
    """Debian's rclone, lftp, vsftpd and GNU time; the tests' FTP account; bench/requirements.txt."""
    wanted = {"rclone": "/usr/bin/rclone", "lftp": "/usr/bin/lftp", "vsftpd": "/usr/sbin/vsftpd",
              "time": "/usr/bin/time"}
    missing = [package for package, path in wanted.items() if not Path(path).exists()]
    if missing:
        print(f"installing {' '.join(missing)} (apt-get)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not all(importlib.util.find_spec(name) for name in ("psutil", "pytest", "trustme")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(ROOT / "bench" / "requirements.txt")], check=True)
    # Idempotent: the account, its PAM service and vsftpd's empty secure_chroot_dir.
    subprocess.run(["sh", str(ROOT / "tests" / "servers" / "ftp_user.sh")], check=True)


# -- the FTP servers ---------------------------------------------------------------------------


@dataclass
class Server:
    scheme: str
    port: int
    ca_file: Path | None
    user: str
    password: str
    served: Path  # the account's folder for this run, as this machine sees it (the server's own disk)

    def url(self, path: Path) -> str:
        return f"{self.scheme}://{self.user}@127.0.0.1:{self.port}{path}"


@contextlib.contextmanager
def vsftpd_pair(work: Path) -> Iterator[dict[str, Server]]:
    """A plain and an explicit-TLS vsftpd, as tests/fixtures/ftp.py starts them (its code)."""
    import trustme

    from tests.fixtures.ftp import FTP_TEST_PASSWORD, FTP_TEST_USER, VSFTPD_CONFIG, _free_range, _LocalVsftpd
    from tests.fixtures.processes import free_port

    account = pwd.getpwnam(FTP_TEST_USER)
    folder = work / "vsftpd"
    folder.mkdir()
    authority = trustme.CA()
    cert, ca_file = folder / "server.pem", folder / "ca.pem"
    authority.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(cert))
    authority.cert_pem.write_to_path(str(ca_file))
    config = folder / "vsftpd.conf"
    shutil.copyfile(VSFTPD_CONFIG, config)
    served = Path(tempfile.mkdtemp(prefix=".watcher-bench-", dir=account.pw_dir))
    servers: dict[str, Server] = {}
    running: list[_LocalVsftpd] = []
    try:
        os.chown(served, account.pw_uid, account.pw_gid)
        served.chmod(0o755)
        for scheme in SCHEMES:
            tls = scheme == "ftps"
            options = [f"rsa_cert_file={cert}", f"rsa_private_key_file={cert}"] if tls else ["ssl_enable=NO"]
            for attempt in range(3):  # a port may be taken between probe and bind
                first = _free_range(PASSIVE_PORTS)
                vsftpd = _LocalVsftpd(config, folder / f"{scheme}.log", free_port(), first,
                                      [*options, *SERVER_OPTIONS, f"pasv_max_port={first + PASSIVE_PORTS - 1}"])
                try:
                    vsftpd.start()
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
            running.append(vsftpd)
            servers[scheme] = Server(scheme, vsftpd.port, ca_file if tls else None, FTP_TEST_USER,
                                     FTP_TEST_PASSWORD, served)
        yield servers
    finally:
        for vsftpd in running:
            vsftpd.stop()
        shutil.rmtree(served, ignore_errors=True)


# -- the tools ---------------------------------------------------------------------------------


def tool_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without what changes how a tool behaves; HOME in the run's folder, so no
    user configuration (~/.lftprc, ~/.config/rclone) is read."""
    prefixes = ("BACKUP_", "SMTP_", "MAIL_", "RCLONE_", "LFTP")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | {"HOME": str(home)} | extra


class Tool:
    """One tool's copy of one data set on one server, for one round."""

    name = ""

    def __init__(self, source: Path, server: Server, remote: Path, work: Path) -> None:
        self.source = source
        self.server = server
        self.remote = remote  # the absolute path on the server
        self.work = work
        self.env = tool_env(work)

    def command(self, step: str, restore_to: Path) -> list[str]:
        raise NotImplementedError

    def restored(self, restore_to: Path) -> Path:
        """Where the restored copy of `source` is."""
        return restore_to


class Watcher(Tool):
    """Encrypted, `auto` compression (format 2), as a new repository on a server is."""

    name = "watcher"
    security = {"BACKUP_REPOSITORY_PASSWORD": REPOSITORY_PASSWORD, "BACKUP_COMPRESSION": "auto"}

    def __init__(self, source: Path, server: Server, remote: Path, work: Path) -> None:
        super().__init__(source, server, remote, work)
        variables = {"BACKUP_SOURCES": str(source), "BACKUP_TARGET": server.url(remote),
                     "BACKUP_TARGET_PASSWORD": server.password, "BACKUP_STATE_DIR": str(work / "state"),
                     **self.security}
        if server.ca_file:
            variables["BACKUP_TLS_CA_FILE"] = str(server.ca_file)
        # The copy of watcher/ taken at the start (see code_snapshot) comes first on the path.
        self.env = tool_env(work, PYTHONPATH=str(CODE[0]), **variables)

    def command(self, step: str, restore_to: Path) -> list[str]:
        if step == "restore":
            return [str(BIN / "watcher"), "restore", "latest", "--to", str(restore_to)]
        return [str(BIN / "watcher"), "backup"]

    def restored(self, restore_to: Path) -> Path:
        return restore_to / self.source.relative_to("/")  # restore recreates absolute paths under DIR


class PlainWatcher(Watcher):
    """BACKUP_ENCRYPTION=none (format 1): what encryption and compression cost, in the same rounds."""

    name = "watcher, no encryption"
    security = {"BACKUP_ENCRYPTION": "none"}


class Rclone(Tool):
    """`rclone copy` with an on-the-fly `:ftp:` remote given by flags."""

    name = "rclone"

    def __init__(self, source: Path, server: Server, remote: Path, work: Path, obscured: str) -> None:
        super().__init__(source, server, remote, work)
        self.base = ["rclone", "copy", "--config", str(work / "rclone.conf"),  # absent: defaults only
                     "--ftp-host", "127.0.0.1", "--ftp-port", str(server.port), "--ftp-user", server.user,
                     "--ftp-pass", obscured,
                     "--ftp-writing-mdtm",  # vsftpd sets times with MDTM, not MFMT (rclone's manual)
                     "--ftp-concurrency", str(RCLONE_CONCURRENCY),
                     "--transfers", str(RCLONE_TRANSFERS), "--checkers", str(RCLONE_CHECKERS),
                     "--stats", "0", "--stats-log-level", "NOTICE", "--stats-one-line"]
        if server.scheme == "ftps":
            # rclone 1.60's FTP backend ignores --ca-cert; Go verifies against SSL_CERT_FILE instead.
            # With TLS 1.3 its data connections fail to resume the session (vsftpd 3.0.3 answers
            # "illegal parameter"): --ftp-disable-tls13 is its manual's workaround.
            self.base += ["--ftp-explicit-tls", "--ftp-disable-tls13"]
            self.env["SSL_CERT_FILE"] = str(server.ca_file)

    def command(self, step: str, restore_to: Path) -> list[str]:
        if step == "restore":
            return [*self.base, f":ftp:{self.remote}", str(restore_to)]
        return [*self.base, str(self.source), f":ftp:{self.remote}"]


class Lftp(Tool):
    """`lftp -f SCRIPT`: `mirror -R` up, `mirror` down, `--parallel`."""

    name = "lftp"

    def __init__(self, source: Path, server: Server, remote: Path, work: Path) -> None:
        super().__init__(source, server, remote, work)
        settings = ["set net:max-retries 2", "set net:timeout 60",
                    "set ftp:use-mdtm-overloaded true"]  # vsftpd sets times with MDTM (lftp's manual)
        if server.scheme == "ftps":
            settings += ["set ftp:ssl-force true", "set ftp:ssl-protect-data true", "set ftp:ssl-protect-list true",
                         f"set ssl:ca-file {server.ca_file}", "set ssl:verify-certificate true"]
        else:
            settings += ["set ftp:ssl-allow false"]
        # The password sits in the script file, not on a command line.
        self.head = [*settings, f"open -u {server.user},{server.password} -p {server.port} ftp://127.0.0.1"]

    def command(self, step: str, restore_to: Path) -> list[str]:
        if step == "restore":
            mirror = f"mirror --parallel={LFTP_PARALLEL} {self.remote} {restore_to}"
        else:
            mirror = f"mirror -R --parallel={LFTP_PARALLEL} {self.source} {self.remote}"
        script = self.work / "lftp-script"
        script.write_text("\n".join([*self.head, mirror, ""]))
        return ["lftp", "-f", str(script)]


# -- the code measured ------------------------------------------------------------------------


def code_snapshot(work: Path) -> tuple[str, str]:
    """Copy watcher/ as it is now, compiled, for every watcher run to import (before the editable
    install's copy, which others may edit during the run); return its commit and modified files."""
    code = work / "code"
    shutil.copytree(ROOT / "watcher", code / "watcher", ignore=shutil.ignore_patterns("__pycache__"))
    # PYTHONDONTWRITEBYTECODE may be set: compile once here so that no run compiles at start-up.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(code)], check=True)
    found = subprocess.run([sys.executable, "-c", "import watcher; print(watcher.__file__)"], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONPATH": str(code)}, cwd=work).stdout.strip()
    if not found.startswith(str(code)):
        raise SystemExit(f"the copy of watcher/ is not the one imported ({found})")
    CODE[:] = [code]
    return first_line(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"]), _modified()


# -- measuring ---------------------------------------------------------------------------------

Samples = dict[str, dict[str, dict[str, dict[str, list]]]]  # data set -> step -> scheme -> tool -> samples


def identical(source: Path, copy: Path, log: TextIO) -> bool:
    """diff -r: same names, same bytes."""
    result = subprocess.run(["diff", "-r", "-q", str(source), str(copy)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        log.write(f"# diff -r {source} {copy}: exit {result.returncode}\n{result.stdout[-4000:]}{result.stderr}\n")
        log.flush()
    return result.returncode == 0


def profile_command(command: list[str], out: Path) -> list[str]:
    """The command under py-spy (every thread, idle included: where wall time goes), raw stacks to `out`."""
    return [str(BIN / "py-spy"), "record", "--idle", "--threads", "--format", "raw", "--rate", "250",
            "--output", str(out), "--", *command]


def summarize(raw: Path, top: int = 8) -> str:
    """Per thread, the functions with the largest share of its samples: watcher's own, inclusive; then
    any function, self (with its line)."""
    import collections
    import re

    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        name = thread.partition(": ")[2] or "MainThread"
        functions = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        totals[name] += int(count)
        for function in set(functions):
            if "watcher/" in function and "watcher/cli.py" not in function:  # where in watcher, not the entry points
                inclusive[name][function] += int(count)
        if functions:
            own[name][frames[-1]] += int(count)  # self time keeps the line number
    out = []
    for name, total in totals.most_common():
        if name == "lock-refresh":  # asleep throughout
            continue
        out.append(f"    thread {name} ({total} samples)")
        for title, counter in (("inclusive", inclusive[name]), ("self", own[name])):
            out += [f"      {title:9} {count / total:6.1%}  {function}" for function, count in counter.most_common(top)]
    return "\n".join(out)


def run_round(number: int, pristine: Path, work_root: Path, servers: dict[str, Server], obscured: str,
              samples: Samples, checks: dict[str, bool], log: TextIO, profiles: Path | None) -> None:
    """Every tool through the steps, both data sets, both servers, on a fresh copy of the tree.

    Nothing is deleted before the run ends (as bench/run.py: on a disk without a journal, files
    created soon after many were deleted cost more, which would slow later restores).
    """
    from bench.dataset import change_one_percent
    from bench.run import measure

    work = work_root / f"round{number}"
    work.mkdir()
    data = work / "data"
    subprocess.run(["cp", "-a", str(pristine), str(data)], check=True)
    served = next(iter(servers.values())).served
    remote_round = served / work.name
    remote_round.mkdir()
    owner = served.stat()
    os.chown(remote_round, owner.st_uid, owner.st_gid)
    tools: dict[tuple[str, str], list[Tool]] = {}
    for data_set in SETS:
        for scheme in SCHEMES:
            place = f"{FOLDER[data_set]}-{scheme}"
            made: list[Tool] = []
            for cls in (Watcher, PlainWatcher, Rclone, Lftp):
                slug = cls.name.replace(", ", "-").replace(" ", "-")
                folder = work / f"{place}-{slug}"
                folder.mkdir()
                remote = remote_round / f"{place}-{slug}"
                source = data / FOLDER[data_set]
                made.append(cls(source, servers[scheme], remote, folder, obscured) if cls is Rclone
                            else cls(source, servers[scheme], remote, folder))
            if profiles is not None:
                made = made[:1]  # encrypted watcher alone
            shift = number % len(made)
            tools[(data_set, scheme)] = made[shift:] + made[:shift]
    for step in STEPS:
        if step == "1% changed re-run":
            changed = change_one_percent(data)
            log.write(f"# round {number}: change_one_percent changed {changed} files\n")
        for data_set in SETS:
            for scheme in SCHEMES:
                for tool in tools[(data_set, scheme)]:
                    restore_to = tool.work / "restore"
                    command = tool.command(step, restore_to)
                    raw = None
                    if profiles is not None:
                        name = f"round{number}-{FOLDER[data_set]}-{scheme}-{step}".replace(" ", "-").replace("%", "pct")
                        raw = profiles / f"{name}.txt"
                        command = profile_command(command, raw)
                    os.sync()
                    log.write(f"# round {number}, {data_set}, {scheme}, {step}, {tool.name}\n")
                    sample = measure(command, tool.env, tool.work, log)
                    samples[data_set][step][scheme].setdefault(tool.name, []).append(sample)
                    if step == "restore":
                        ok = identical(tool.source, tool.restored(restore_to), log)
                    elif not isinstance(tool, Watcher):  # a mirror on the server's disk must equal the source
                        ok = identical(tool.source, tool.remote, log)
                    else:
                        ok = True  # watcher's repository is checked by its restore
                    key = f"{data_set}|{step}|{scheme}|{tool.name}"
                    checks[key] = checks.get(key, True) and ok
                    print(f"  round {number + 1} {data_set:16} {scheme:4} {step:17} {tool.name:8} "
                          f"{sample.seconds:7.2f} s {sample.peak_bytes / MiB:6.0f} MiB"
                          f"{'' if ok else '  NOT IDENTICAL (see the log)'}", flush=True)
                    if raw is not None:
                        print(f"    py-spy stacks: {raw}\n{summarize(raw)}", flush=True)


# -- reporting ---------------------------------------------------------------------------------


def median_seconds(samples: list) -> float:
    return statistics.median(sample.seconds for sample in samples)


def median_peak(samples: list) -> float:
    return statistics.median(sample.peak_bytes for sample in samples)


def faster_peer(by_tool: dict[str, list]) -> tuple[str, float]:
    return min(((name, median_seconds(by_tool[name])) for name in PEERS), key=lambda pair: pair[1])


def table(samples: Samples, checks: dict[str, bool], sizes: dict[str, int]) -> str:
    head = ("| data set | operation | target | " + " | ".join(TOOLS) + " | watcher / faster peer (time) | "
            "encryption on / off (time) |\n|---|---|---|" + "---:|" * (len(TOOLS) + 2))
    lines = [head]
    for data_set in SETS:
        for step in STEPS:
            for scheme in SCHEMES:
                by_tool = samples[data_set][step][scheme]
                if not by_tool:
                    continue
                cells = []
                for tool in TOOLS:
                    seconds = median_seconds(by_tool[tool])
                    rate = f" ({sizes[data_set] / MiB / seconds:.0f} MiB/s)" if step != "1% changed re-run" else ""
                    flag = "" if checks.get(f"{data_set}|{step}|{scheme}|{tool}", True) else " **(not identical)**"
                    cells.append(f"{seconds:.2f} s{rate}{flag}")
                peer, best = faster_peer(by_tool)
                ratio = median_seconds(by_tool["watcher"]) / best
                cost = median_seconds(by_tool["watcher"]) / median_seconds(by_tool[PlainWatcher.name])
                lines.append(f"| {data_set} | {step} | {scheme}:// | " + " | ".join(cells)
                             + f" | {ratio:.2f} ({peer}) | {cost:.2f} |")
    lines += ["", "Peak memory (median over the rounds of each command's peak RSS):", "",
              "| data set | operation | target | " + " | ".join(TOOLS) + " |", "|---|---|---|" + "---:|" * len(TOOLS)]
    for data_set in SETS:
        for step in STEPS:
            for scheme in SCHEMES:
                by_tool = samples[data_set][step][scheme]
                if by_tool:
                    lines.append(f"| {data_set} | {step} | {scheme}:// | "
                                 + " | ".join(f"{median_peak(by_tool[tool]) / MiB:.0f} MiB" for tool in TOOLS) + " |")
    return "\n".join(lines)


def verdicts(samples: Samples, checks: dict[str, bool]) -> tuple[list[str], bool]:
    """Small files: watcher faster than both peers; large files: watcher's throughput at least 80%
    of the faster peer's (its time at most 1.25 times the faster peer's). Each operation and target."""
    lines, all_met = [], True
    for data_set in SETS:
        for step in STEPS:
            for scheme in SCHEMES:
                by_tool = samples[data_set][step][scheme]
                if not by_tool:
                    continue
                ours = median_seconds(by_tool["watcher"])
                peer, best = faster_peer(by_tool)
                if data_set == "many small files":
                    met, goal = ours < best, "faster than both"
                else:
                    met, goal = best / ours >= 0.8, "at least 80% of the faster peer's speed"
                met = met and checks.get(f"{data_set}|{step}|{scheme}|watcher", True)
                all_met = all_met and met
                lines.append(f"- {data_set}, {step}, {scheme}://: {goal}: **{'met' if met else 'not met'}** "
                             f"(watcher {ours:.2f} s, {peer} {best:.2f} s: watcher at {best / ours:.0%} of "
                             f"{peer}'s speed)")
    return lines, all_met


def first_line(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    text = (result.stdout or result.stderr).strip()
    return text.splitlines()[0] if text else "?"


def machine_facts(code: tuple[str, str]) -> dict[str, str]:
    import ssl

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), "")
    return {
        "CPU": f"{cpu}, {os.cpu_count()} cores",
        "RAM": f"{memory_kib / 1024 / 1024:.1f} GiB",
        "OS, kernel": f"{os_name}, Linux {platform.release()}",
        "disk": f"{first_line(['stat', '-f', '-c', '%T', tempfile.gettempdir()])} (data, the server's folder and "
                "restores on the same disk)",
        "Python, OpenSSL": f"{platform.python_version()}, {ssl.OPENSSL_VERSION}",
        "watcher": f"commit {code[0]}" + (f" (working tree: {code[1]} modified)" if code[1] else ""),
        "vsftpd": first_line(["dpkg-query", "-W", "-f", "${Version}", "vsftpd"]),
        "rclone": first_line(["rclone", "version"]),
        "lftp": first_line(["lftp", "--version"]).replace("| ", "").split(" Copyright")[0],
    }


def document(facts: dict[str, str], args: argparse.Namespace, sizes: dict[str, int], counts: dict[str, int],
             rendered: str, verdict_lines: list[str], started: datetime, minutes: float) -> str:
    options = f" --repeat {args.repeat}"
    if (args.small, args.large, args.large_mib) != (5000, 3, 64):
        options += f" --small {args.small} --large {args.large} --large-mib {args.large_mib}"
    return f"""Measured by `bench/ftp.py` on {started:%Y-%m-%d %H:%M} UTC ({minutes:.1f} minutes for the whole run);
run it again with (as root: it installs what is missing and starts its own vsftpd):

```sh
.venv/bin/python bench/ftp.py{options}
```

Machine and versions:

{chr(10).join(f"- {name}: {value}" for name, value in facts.items())}

Data sets (`bench/dataset.py`, random incompressible bytes), measured separately:

- **many small files**: {counts['many small files']:,} files of 200 B to 40 kB in
  {max(1, args.small // 100) * 10} folders, {sizes['many small files'] / MiB:.1f} MiB;
- **large files**: {counts['large files']} files of {args.large_mib} MiB, {sizes['large files'] / MiB:.0f} MiB.

`dataset.change_one_percent` then rewrites 1% of the small files (same sizes, new bytes) and appends
1 MiB to one large file, before the re-run.

Method:

- Two vsftpd {facts['vsftpd']} on 127.0.0.1 started by the script, one plain (`ftp://`) and one explicit
  TLS (`ftps://`: `AUTH TLS`, `PROT P`, `require_ssl_reuse=YES`, a certificate from a throwaway CA that
  every client verifies), both from `tests/servers/vsftpd/vsftpd.conf` with the tests' account,
  with `{" ".join(SERVER_OPTIONS)}` and a {PASSIVE_PORTS}-port passive range.
  The same servers and the same tree serve every tool; the server's folder is on the same disk.
- **What is compared.** watcher stores a deduplicated, versioned repository: small files are packed
  together into packs of about 16 MiB, so it uploads a few large objects (each under a temporary
  name, then renamed), plus an index and a snapshot; the re-run reads only the changed files and adds
  a snapshot, and every earlier snapshot stays restorable. rclone and lftp mirror the tree: one file
  on the server per file, one data connection each, and the re-run overwrites the changed files in
  place (no history). watcher uses one FTP control connection for a whole run (item 3 of the issue:
  servers limiting connections per user are fine); the peers run in parallel.
- **On 127.0.0.1 the link costs next to nothing**, so the large-file rows compare processor work:
  watcher reads, cuts (FastCDC) and hashes (SHA-256) every byte and starts a Python interpreter,
  while rclone and lftp only move bytes. On a link slower than watcher's throughput in these rows,
  the network rather than that work would set the pace (not measured here).
  Where watcher's time goes: `.venv/bin/python bench/ftp.py --repeat 1 --profile DIR` runs watcher
  alone under py-spy and prints each thread's busiest functions (its times are then not results).
- **watcher**: `watcher backup` with `BACKUP_TARGET={{ftp,ftps}}://watcher-ftp@127.0.0.1:PORT/PATH`,
  `BACKUP_TARGET_PASSWORD`, `BACKUP_TLS_CA_FILE` and a new `BACKUP_STATE_DIR` for the first backup (kept
  for the re-run, as a daemon keeps it); `watcher restore latest --to EMPTY` (which verifies every byte
  it reads). Encrypted (issue 10): `BACKUP_REPOSITORY_PASSWORD` and `BACKUP_COMPRESSION=auto`, format 2,
  the repository made by the first backup (its scrypt calibration and key wrap, ~0.75 s, are in that
  row); **watcher, no encryption** is the same with `BACKUP_ENCRYPTION=none` (format 1), its own
  repository: the "encryption on / off" column is what encryption and compression cost. It runs from
  a compiled copy of `watcher/` taken when the run starts (the commit named
  above), so that edits made meanwhile cannot mix into the figures.
- **rclone**: `rclone copy` to and from an `:ftp:` remote given by flags (`--ftp-host`, `--ftp-port`,
  `--ftp-user`, `--ftp-pass` obscured by `rclone obscure`; for FTPS `--ftp-explicit-tls`, with the CA in
  `SSL_CERT_FILE`, since rclone 1.60's FTP backend ignores `--ca-cert`, and `--ftp-disable-tls13`: over
  TLS 1.3 its data connections fail to resume the session with this vsftpd, so it runs TLS 1.2),
  `--transfers {RCLONE_TRANSFERS} --checkers {RCLONE_CHECKERS}` (its defaults) with
  `--ftp-concurrency {RCLONE_CONCURRENCY}` (transfers + checkers + 1, as its manual asks) and
  `--ftp-writing-mdtm` (its manual's setting for vsftpd, so the re-run compares modification times
  and finds the rewritten files).
- **lftp**: `lftp -f SCRIPT` with `open -u USER,PASS -p PORT ftp://127.0.0.1`, then
  `mirror -R --parallel={LFTP_PARALLEL} DIR PATH` (upload and re-run) or
  `mirror --parallel={LFTP_PARALLEL} PATH EMPTY` (download); for FTPS
  `set ftp:ssl-force true`, `ftp:ssl-protect-data true`, `ssl:ca-file CA`; for FTP `ftp:ssl-allow false`;
  both `ftp:use-mdtm-overloaded true` (vsftpd sets times with `MDTM`). lftp's FTPS downloads wait
  about 50 ms per file on each connection here (in a separate check, 400 small files: 19.9 s with
  `--parallel=1`, 5.3 s with 4, 3.0 s with 8): its many-small-files FTPS restore row is that wait.
- Parallel connections: rclone at most {RCLONE_CONCURRENCY}, lftp {LFTP_PARALLEL} transfers at a time (each on its
  own connection) besides its session, watcher 1: all within the `max_per_ip=20` of the repository's
  vsftpd config (vsftpd's own default is 0, unlimited; a server with a lower limit would refuse the
  peers' extra connections, not watcher's).
- Checks: every restore or download must equal the source (`diff -r`); after each upload and
  re-run, the peers' mirrors on the server's disk must equal the source too (untimed).
- {args.repeat} rounds; each starts from a fresh copy of the tree, and in each step every tool runs in turn
  (the order rotates between rounds) after an untimed `sync`; caches are warm for all alike.
  Figures are medians over the rounds: wall time of the command; throughput = data set size / time;
  peak memory = the larger of the summed RSS of the command's process tree (psutil, every 50 ms) and its
  largest process's max RSS (`/usr/bin/time`). vsftpd is not counted.
- The ratio column is (encrypted) watcher's median time over the faster peer's: below 1, watcher is faster. "Within
  80% of the faster peer" on large files is read as watcher's speed at least 80% of the faster peer's
  (its time at most 1.25 times).

Results (median of {args.repeat}):

{rendered}

Targets (issue 3, item 6):

{chr(10).join(verdict_lines)}
"""


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported (default 3)")
    parser.add_argument("--small", type=int, default=5000, help="small files (default 5000)")
    parser.add_argument("--large", type=int, default=3, help="large files (default 3)")
    parser.add_argument("--large-mib", type=int, default=64, help="size of each large file in MiB (default 64)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run watcher's commands under py-spy, raw stacks into DIR (figures are not results)")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: it installs packages and starts vsftpd, which logs in the tests' account")
    if args.repeat < 1 or args.small < 1 or args.large < 1 or args.large_mib < 2:
        parser.error("--repeat, --small, --large at least 1; --large-mib at least 2")

    ensure_installed()
    from bench.dataset import generate
    from bench.run import busy_seconds, own_seconds

    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f}: other work on this machine slows every tool")
    started = datetime.now(UTC)
    clock = time.monotonic()
    busy_before = busy_seconds() - own_seconds()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = f"ftp-{started:%Y%m%dT%H%M%SZ}"
    samples: Samples = {d: {s: {scheme: {} for scheme in SCHEMES} for s in STEPS} for d in SETS}
    checks: dict[str, bool] = {}
    with (tempfile.TemporaryDirectory(prefix="watcher-bench-ftp-") as temp,
          open(args.profile / "commands.log" if args.profile else RESULTS / f"{stamp}.log", "w") as log):
        work = Path(temp)
        work.chmod(0o755)
        pristine = work / "pristine"
        total = generate(pristine, args.small, args.large, args.large_mib)
        sizes = {"large files": args.large * args.large_mib * MiB}
        sizes["many small files"] = total - sizes["large files"]
        counts = {"many small files": args.small, "large files": args.large}
        needed = WORK_PER_ROUND * total * args.repeat
        if shutil.disk_usage(work).free < needed:
            raise SystemExit(f"needs about {needed / 2**30:.1f} GiB free in {work.parent}")
        print(f"data sets: {args.small} small files ({sizes['many small files'] / MiB:.1f} MiB), "
              f"{args.large} x {args.large_mib} MiB files", flush=True)
        obscured = subprocess.run(["rclone", "obscure", "-"], input=_password(), capture_output=True, text=True,
                                  check=True).stdout.strip()
        code = code_snapshot(work)
        with vsftpd_pair(work) as servers:
            for number in range(args.repeat):
                run_round(number, pristine, work, servers, obscured, samples, checks, log, args.profile)
    minutes = (time.monotonic() - clock) / 60
    others = busy_seconds() - own_seconds() - busy_before
    facts = machine_facts(code)
    now = first_line(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"])
    if (now, _modified()) != code:
        facts["watcher"] += (f"; copied at the start of the run (the repository has moved on since, to {now.split()[0]}"
                             f"{' and modified files' if _modified() else ''})")
    facts["other load"] = (f"load average {load_before:.2f} at the start; processes other than this benchmark's "
                           f"used {others:.0f} CPU-seconds during it ({others / (minutes * 60 * os.cpu_count()):.0%} "
                           "of the machine)")
    if args.profile:
        print(f"\npy-spy raw stacks of watcher's runs in {args.profile} (its times above include the profiler)")
        return 0
    rendered = table(samples, checks, sizes)
    verdict_lines, _ = verdicts(samples, checks)
    failed = [key for key, ok in checks.items() if not ok]
    if failed:
        verdict_lines.append("- copies not identical to the source: "
                             + ", ".join(key.replace("|", " / ") for key in failed))
    print(f"\n{rendered}\n\n" + "\n".join(verdict_lines))
    raw = {"started": stamp, "args": {k: str(v) for k, v in vars(args).items()}, "sizes": sizes, "machine": facts,
           "checks": checks,
           "samples": {d: {s: {sc: {t: [asdict(x) for x in v] for t, v in by.items()} for sc, by in steps.items()}
                           for s, steps in by_step.items()} for d, by_step in samples.items()}}
    (RESULTS / f"{stamp}.json").write_text(json.dumps(raw, indent=1))
    print(f"\nraw samples in bench/results/{stamp}.json, commands and their output in bench/results/{stamp}.log")
    if not args.no_docs:
        write_section("## FTP and FTPS", document(facts, args, sizes, counts, rendered, verdict_lines, started,
                                                  minutes))
        print("wrote the FTP and FTPS section of docs/BENCHMARKS.md")
    return 1 if failed else 0


def _modified() -> str:
    """The files of watcher/ that differ from the commit (what ran is the working tree: editable install)."""
    result = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "watcher"],
                            capture_output=True, text=True, check=False)
    return ", ".join(line[3:] for line in result.stdout.splitlines() if not line[3:].endswith(".pyc"))


def _password() -> str:
    from tests.fixtures.ftp import FTP_TEST_PASSWORD

    return FTP_TEST_PASSWORD


if __name__ == "__main__":
    sys.exit(main())
