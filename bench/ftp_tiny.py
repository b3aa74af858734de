"""Many tiny files over plain FTP, first backup, encrypted: watcher against duplicity (issue 10, item 5).

The tree: bench/daemon.py's generator, 20,000 files of 64 B to 4 KiB (incompressible, seeded) in
200 folders three levels deep. Each round, from a fresh copy of it, after an untimed `sync`, in an
order that rotates between rounds:

  watcher                  `watcher backup` into a new repository, BACKUP_REPOSITORY_PASSWORD set and
                           BACKUP_COMPRESSION=auto (format 2), a new BACKUP_STATE_DIR
  watcher, no encryption   the same with BACKUP_ENCRYPTION=none (format 1): what encryption costs
  duplicity                `duplicity full` with a PASSPHRASE (GnuPG symmetric encryption, its default)
                           and a new --archive-dir; duplicity reaches ftp:// through lftp

all to the plain vsftpd of bench/ftp.py (same config, same account), each into a folder of its own.
Measured with bench/run.py's `measure` (wall time, CPU, peak RSS of the process tree); every
repository is then restored or verified untimed (`watcher restore`, `duplicity verify`), so a
tool that stored less than everything would stop the run. Prints the table and writes the
"FTP, many tiny files, encrypted" section of docs/BENCHMARKS.md (unless --no-docs).
Needs root (it installs duplicity and what bench/ftp.py needs; it logs in the tests' account).

    .venv/bin/python bench/ftp_tiny.py [--files 20000] [--repeat 3] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import ftp  # noqa: E402
from bench.daemon import generate_tree  # noqa: E402
from bench.report import write_section  # noqa: E402
from bench.run import Sample, measure  # noqa: E402

HEADING = "## FTP, many tiny files, encrypted"
TOOLS = ("watcher", "watcher, no encryption", "duplicity")
PASSWORD = "bench-only"  # watcher's BACKUP_REPOSITORY_PASSWORD, duplicity's PASSPHRASE
MiB = 1024 * 1024


def command_and_env(tool: str, source: Path, server: ftp.Server, remote: Path, work: Path
                    ) -> tuple[list[str], dict[str, str]]:
    """The first-backup command of `tool` and its environment (HOME in `work`: no user configuration)."""
    if tool == "duplicity":
        env = ftp.tool_env(work, FTP_PASSWORD=server.password, PASSPHRASE=PASSWORD)
        return (["duplicity", "full", "--archive-dir", str(work / "archive"), "--name", "bench",
                 str(source), f"ftp://{server.user}@127.0.0.1:{server.port}/{remote}"], env)  # //: absolute
    variables = {"BACKUP_SOURCES": str(source), "BACKUP_TARGET": server.url(remote),
                 "BACKUP_TARGET_PASSWORD": server.password, "BACKUP_STATE_DIR": str(work / "state")}
    if tool == "watcher":
        variables |= {"BACKUP_REPOSITORY_PASSWORD": PASSWORD, "BACKUP_COMPRESSION": "auto"}
    else:
        variables["BACKUP_ENCRYPTION"] = "none"
    return [str(ftp.BIN / "watcher"), "backup"], ftp.tool_env(work, PYTHONPATH=str(ftp.CODE[0]), **variables)


def check(tool: str, source: Path, command: list[str], env: dict[str, str], work: Path) -> None:
    """Untimed: the backup holds the whole tree (watcher restores it and `diff -r`; duplicity verifies)."""
    if tool == "duplicity":
        verify = ["duplicity", "verify", "--archive-dir", str(work / "archive"), "--name", "bench",
                  command[-1], str(source)]
        subprocess.run(verify, env=env, check=True, capture_output=True)
        return
    restored = work / "restored"
    subprocess.run([command[0], "restore", "latest", "--to", str(restored)], env=env, check=True,
                   capture_output=True)
    subprocess.run(["diff", "-r", "-q", str(source), str(restored / source.relative_to("/"))], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (see bench/ftp.py)")
    ftp.ensure_installed()
    if not Path("/usr/bin/duplicity").exists():
        subprocess.run(["apt-get", "install", "-y", "-qq", "duplicity"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    started = datetime.now(UTC)
    clock = time.monotonic()
    samples: dict[str, list[Sample]] = {tool: [] for tool in TOOLS}
    ftp.RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="watcher-bench-tiny-") as temp, \
            open(ftp.RESULTS / f"ftp-tiny-{started:%Y%m%dT%H%M%SZ}.log", "w") as log:
        work_root = Path(temp)
        work_root.chmod(0o755)
        code = ftp.code_snapshot(work_root)
        pristine = work_root / "pristine"
        data_bytes = generate_tree(pristine, args.files)
        time.sleep(2)  # files modified within a second of a run are not cached by watcher: let them age
        with ftp.vsftpd_pair(work_root) as servers:
            server = servers["ftp"]
            for number in range(args.repeat):
                work = work_root / f"round{number}"
                work.mkdir()
                source = work / "data"
                subprocess.run(["cp", "-a", str(pristine), str(source)], check=True)
                remote_round = server.served / work.name
                remote_round.mkdir()
                owner = server.served.stat()
                os.chown(remote_round, owner.st_uid, owner.st_gid)
                order = TOOLS[number % len(TOOLS):] + TOOLS[: number % len(TOOLS)]
                for tool in order:
                    folder = work / tool.replace(", ", "-").replace(" ", "-")
                    folder.mkdir()
                    remote = remote_round / folder.name
                    if tool == "duplicity":  # lftp's `mkdir -p` fails on this server, then duplicity waits 30 s
                        remote.mkdir()
                        os.chown(remote, owner.st_uid, owner.st_gid)
                    command, env = command_and_env(tool, source, server, remote, folder)
                    os.sync()
                    log.write(f"# round {number}, {tool}\n")
                    sample = measure(command, env, folder, log)
                    samples[tool].append(sample)
                    check(tool, source, command, env, folder)
                    print(f"  round {number + 1} {tool:24} {sample.seconds:6.2f} s {sample.cpu_seconds:6.2f} s CPU "
                          f"{sample.peak_bytes / MiB:5.0f} MiB", flush=True)
    minutes = (time.monotonic() - clock) / 60
    body = section(samples, args, data_bytes, code, started, minutes)
    print(body)
    if not args.no_docs:
        write_section(HEADING, body)
    return 0


def section(samples: dict[str, list[Sample]], args: argparse.Namespace, data_bytes: int, code: tuple[str, str],
            started: datetime, minutes: float) -> str:
    def median(tool: str, what: str) -> float:
        return statistics.median(getattr(sample, what) for sample in samples[tool])

    duplicity_version = ftp.first_line(["duplicity", "--version"])
    gpg_version = ftp.first_line(["gpg", "--version"])
    rows = ["| tool | time | CPU | peak memory | time / duplicity's |", "|---|---:|---:|---:|---:|"]
    for tool in TOOLS:
        rows.append(f"| {tool} | {median(tool, 'seconds'):.2f} s | {median(tool, 'cpu_seconds'):.2f} s | "
                    f"{median(tool, 'peak_bytes') / MiB:.0f} MiB | "
                    f"{median(tool, 'seconds') / median('duplicity', 'seconds'):.2f} |")
    ratio = median("watcher", "seconds") / median("duplicity", "seconds")
    cost = median("watcher", "seconds") / median("watcher, no encryption", "seconds")
    verdict = "**met**" if ratio <= 0.5 else "**not met**"
    when = f"{started:%Y-%m-%d %H:%M}"
    return f"""Measured by `bench/ftp_tiny.py --files {args.files} --repeat {args.repeat}` on {when} UTC
({minutes:.1f} minutes for the whole run), as root; the machine of "FTP and FTPS" above
({platform.python_version()}, {duplicity_version}, {gpg_version}); watcher: commit {code[0][:60]}{code[1]}.

- Tree: {args.files:,} files of 64 B to 4 KiB (`bench/daemon.py`'s generator, incompressible), in
  {args.files // 100} folders, {data_bytes / MiB:.1f} MiB; the plain-FTP vsftpd of `bench/ftp.py`.
- **watcher**: `watcher backup`, encrypted (`BACKUP_REPOSITORY_PASSWORD`, `BACKUP_COMPRESSION=auto`) into a new
  repository (its timed run makes it: scrypt calibration and key wrap included) with a new state folder;
  **watcher, no encryption**: the same with `BACKUP_ENCRYPTION=none`; **duplicity**: `duplicity full` with
  `PASSPHRASE` (GnuPG symmetric encryption, its default) and a new `--archive-dir`, over lftp.
- Each round starts from a fresh copy; the order rotates; every backup is checked afterwards, untimed
  (`watcher restore` then `diff -r`; `duplicity verify`). Medians of {args.repeat} rounds; time is wall
  time; CPU and peak memory as in `bench/run.py` (the process tree; vsftpd not counted).

| tool | time | CPU | peak memory | time / duplicity's |
{chr(10).join(rows[1:])}

Target (issue 10, item 5): first backup over FTP at most 0.5x duplicity's time: {verdict} ({ratio:.2f}x).
Encryption and compression cost watcher {cost:.2f}x its unencrypted time here.
"""


if __name__ == "__main__":
    sys.exit(main())
