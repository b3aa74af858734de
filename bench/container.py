"""Container benchmark (issue 9): image sizes, build time, and `docker compose up` to the first snapshot.

    .venv/bin/python bench/container.py [--cold] [--changes 5]

From a fresh copy of the repository (the files git tracks, as a clone has them; no .env but a free
MAILDEV_PORT), under the compose project `watcher-bench`:
(a) `docker compose build` (with `--cold`: `--no-cache`, every layer built again, the apt and pip
    downloads included) and the size of each image as the engine reports it;
(b) `docker compose up -d` to the first snapshot on each target: the time until the watcher's log has
    the start-up run's "target N (...): snapshot ... saved" line for both targets (the servers making
    their keys, the health waits and the connections are all in it);
(c) `--changes` times: a file dropped into ./data until its snapshot is saved on the second target
    (the compose default debounce, 5 s, is in it).
Then `docker compose down -v` (this project's containers, network and volumes) and the images it built
are removed. Needs a running engine and Compose v2: `eval "$(bash docker/engine.sh start)"` gives both.
Prints the table and writes it into the "Container" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import write_section

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "watcher-bench"
SERVICES = ("watcher", "sftp", "ftp", "mail")
SAVED = re.compile(r"target (\d) \(.*?\): snapshot \S+ saved")


def compose(folder: Path, *args: str, timeout: float = 1800) -> None:
    subprocess.run(["docker", "compose", "-p", PROJECT, *args], cwd=folder, check=True, timeout=timeout,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def copy_repository(folder: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, files.decode().split("\0")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)


def wait_for_saved(container, since: float, targets: set[str], deadline: float) -> float:
    """Seconds (engine clock) at which every target in `targets` logged a saved snapshot after `since`."""
    while time.time() < deadline:
        logs = container.logs(since=int(since)).decode(errors="replace")
        if targets <= set(SAVED.findall(logs)):
            return time.time()
        time.sleep(0.1)
    raise TimeoutError(f"no snapshot on targets {sorted(targets)} in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="build every layer again (docker compose build --no-cache)")
    parser.add_argument("--changes", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env()
    folder = Path(tempfile.mkdtemp(prefix="watcher-bench-"))
    try:
        copy_repository(folder)
        (folder / ".env").write_text(f"MAILDEV_PORT={free_port()}\n")
        compose(folder, "down", "-v", "--timeout", "10")
        started = time.monotonic()
        compose(folder, "build", *(["--no-cache"] if args.cold else []))
        build_seconds = time.monotonic() - started
        sizes = {service: client.images.get(f"{PROJECT}-{service}").attrs["Size"] for service in SERVICES}

        up_started = time.time()
        compose(folder, "up", "-d")
        watcher = client.containers.get(f"{PROJECT}-watcher-1")
        first = wait_for_saved(watcher, up_started - 1, {"1", "2"}, time.time() + 300) - up_started

        latencies = []
        for number in range(args.changes):
            dropped = time.time()
            (folder / "data" / f"change-{number}.txt").write_text(f"change {number} at {dropped}\n")
            latencies.append(wait_for_saved(watcher, dropped, {"2"}, dropped + 120) - dropped)
            time.sleep(1)
    finally:
        subprocess.run(["docker", "compose", "-p", PROJECT, "down", "-v", "--timeout", "10", "--rmi", "local"],
                       cwd=folder, timeout=300, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)

    base = client.images.get("debian:bookworm-slim").attrs["Size"]
    rows = "\n".join(f"| `{service}` | {sizes[service] / 1e6:.0f} MB | {(sizes[service] - base) / 1e6:.0f} MB |"
                     for service in SERVICES)
    body = f"""Measured by `bench/container.py{' --cold' if args.cold else ''}` on {time.strftime('%Y-%m-%d')} \
(the machine of "Machine" above; Docker engine {client.version()['Version']}, vfs storage).

| image | size | over `debian:bookworm-slim` ({base / 1e6:.0f} MB) |
|---|---:|---:|
{rows}

| step | seconds |
|---|---:|
| `docker compose build`{' --no-cache (every layer, downloads included)' if args.cold else ' (layers cached)'} | \
{build_seconds:.1f} |
| `docker compose up -d` to the first snapshot on both targets (fresh copy, no `.env`) | {first:.1f} |
| a file dropped into `./data` to its snapshot on target 2, median of {args.changes} (debounce 5 s) | \
{statistics.median(latencies):.2f} |
"""
    print(body)
    write_section("## Container", body)


if __name__ == "__main__":
    main()
