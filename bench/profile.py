"""Profile watcher's first backup, no-change re-run and restore with py-spy, on the benchmark's set-up.

    .venv/bin/python bench/profile.py [--small N] [--large N] [--large-mib N] [--target sftp|file|s3] [--top 12]

Same data set, sshd (or SeaweedFS) and settings as bench/run.py (whose code it reuses). Each operation runs under
`py-spy record --idle --threads --format raw`: every thread, waiting included, so a thread blocked
on the network or on a lock shows where wall time goes, not only CPU. The raw stacks are saved as
bench/results/profile-<time>-<target>-<operation>.txt (flamegraph.pl and speedscope.app read them);
printed, per thread (threads of one name merged): the share of its samples spent in each function
(inclusive, then self), and for the main thread the watcher source lines it was in.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import run

OPERATIONS = ("first backup", "no-change re-run", "restore")


def summarize(raw: Path, top: int) -> str:
    """Per thread: the functions with the largest share of samples, inclusive and self."""
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    lines: collections.Counter[str] = collections.Counter()
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        name = thread.partition(": ")[2] or "MainThread"  # py-spy names a thread once it has started
        samples = int(count)
        totals[name] += samples
        functions = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        for function in set(functions):
            inclusive[name][function] += samples
        if functions:
            own[name][functions[-1]] += samples
        ours = [frame for frame in frames if "watcher/" in frame]
        if name == "MainThread" and ours:
            lines[ours[-1]] += samples
    out = []
    for name, total in totals.most_common():
        out.append(f"-- thread {name}: {total} samples")
        for title, counter in (("inclusive", inclusive[name]), ("self", own[name])):
            out.append(f"   {title}:")
            out += [f"   {samples / total:6.1%}  {function}" for function, samples in counter.most_common(top)]
        if name == "MainThread":
            out.append("   innermost watcher line:")
            out += [f"   {samples / total:6.1%}  {frame}" for frame, samples in lines.most_common(top)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=64)
    parser.add_argument("--target", choices=("sftp", "file", "s3"), default="sftp")
    parser.add_argument("--top", type=int, default=12, help="functions shown per thread (default 12)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (see bench/run.py)")
    run.ensure_installed()
    from dataset import generate

    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="watcher-profile-") as temp, \
            open(run.RESULTS / f"profile-{stamp}.log", "w") as log:
        root = Path(temp)
        root.chmod(0o755)
        work = root / "profile"
        work.mkdir()
        data = work / "data"
        generate(data, args.small, args.large, args.large_mib)
        time.sleep(2)  # watcher does not cache files modified within a second of a run: let them age
        with (run.sshd(root) if args.target == "sftp" else contextlib.nullcontext() as server,
              run.seaweedfs(root) if args.target == "s3" else contextlib.nullcontext() as store):
            if server is not None:
                (server.scratch / work.name).mkdir()
                os.chown(server.scratch / work.name, *run._owner(server.scratch))
            watcher = run.Watcher(data, work, server, store=store)
            for operation in OPERATIONS:
                command = watcher.command(operation, work / "restored")
                assert command is not None
                raw = run.RESULTS / f"profile-{stamp}-{args.target}-{operation.replace(' ', '-')}.txt"
                spy = [str(run.BIN / "py-spy"), "record", "--idle", "--threads", "--rate", "200", "--format", "raw",
                       "--output", str(raw), "--"]
                subprocess.run(["sync"], check=True)
                sample = run.measure(spy + command, watcher.env, work, log)
                print(f"\n=== {operation} ({args.target}), {sample.seconds:.2f} s under py-spy; stacks in "
                      f"{raw.relative_to(run.ROOT)}\n{summarize(raw, args.top)}", flush=True)
            shutil.rmtree(work / "restored", ignore_errors=True)
            if server is not None:
                shutil.rmtree(server.scratch / work.name, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
