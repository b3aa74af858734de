"""The compose stack (SPEC "Container"), built and run on a real Docker engine for the container tests.

`stack` (session) copies the files git tracks into a temporary folder, so that the stack's `./data`,
`.env` and volumes are the tests' own and never a developer's, writes a `.env` there with short timings
and a free MailDev port, and runs `docker compose -p watcher-test up -d --build --wait` from the copy.
The tests drive and inspect the containers through the `docker` SDK; the `docker compose` CLI only
brings the stack up and down. Only the compose project `watcher-test` is ever touched: a stack under
any other name (a developer's `watcher`) is left alone. Teardown removes the project's containers,
network and volumes and keeps its images, so that the next run starts in seconds.

`ready_stack` (function) is the same stack with every service running and healthy: a test that stopped
a server and then failed must not fail the tests after it.

Without an engine that answers or without Compose v2 the tests are skipped; with the environment
variable `CI` set they fail instead, so a CI run cannot pass by skipping them.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import docker.errors  # binds `docker` too (a bare `import docker` sorts as first party: ./docker)
import pytest
from docker.models.containers import Container

from tests.fixtures.processes import free_port

ROOT = Path(__file__).parents[2]
PROJECT = "watcher-test"
SERVICES = ("watcher", "sftp", "ftp", "mail")  # the long-running ones; repository-password runs once
PASSWORD_FILE = "/run/watcher-repository/password"  # the repositories' password, in the watcher alone
UP_TIMEOUT = 20 * 60.0  # the first build: four images from debian:bookworm-slim, npm and PyPI
TARGETS = {1: "sftp://watcher-sftp@sftp/srv/backups", 2: "ftps://watcher-ftp@ftp/srv/backups"}

# The short timings the stack runs with here (`.env`), and what the tests derive their deadlines from.
DEBOUNCE_SECONDS = 1
RETRIES = 2
RETRY_MAX_SECONDS = 3
HEALTH_MAX_AGE_SECONDS = 40
HEALTHCHECK_INTERVAL_SECONDS = 2

# Compose reads these from the shell before `.env`: none of a developer's may reach the test stack.
_STACK_PREFIXES = ("BACKUP_", "MAIL_", "SMTP_", "WATCHER_", "MAILDEV_", "SFTP_", "FTP_", "COMPOSE_")

T = TypeVar("T")


def unavailable(reason: str) -> None:
    """Skip here, fail in CI: container tests that do not run must not look like a pass."""
    if os.environ.get("CI"):
        pytest.fail(f"container tests cannot run in CI: {reason}")
    pytest.skip(reason)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25,
             explain: Callable[[], str] | None = None) -> T:
    """Poll `probe` until it returns something other than None (or False); fail after `timeout` s, with
    what `explain` tells (the daemon's log, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:g} s" + (f"\n{explain()}" if explain else ""))
        time.sleep(interval)


@dataclass(frozen=True)
class Exec:
    """What a command run in a container through the engine (exec) did."""

    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout: {self.out[-3000:]}\nstderr: {self.err[-3000:]}"


@dataclass
class Stack:
    """The running `watcher-test` project: its folder (the copy), its containers and MailDev."""

    folder: Path
    client: docker.DockerClient
    environment: dict[str, str]
    maildev: str

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def staging(self) -> Path:
        return self.folder / "staging"

    # -- the engine and the CLI --------------------------------------------------------------------

    def compose(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`docker compose -p watcher-test ARGS` in the copy; never any other project."""
        return subprocess.run(["docker", "compose", "--ansi", "never", "-p", PROJECT, *args], cwd=self.folder,
                              env=self.environment, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)

    def container(self, service: str) -> Container:
        """The service's one container, freshly inspected (running or not)."""
        labels = [f"com.docker.compose.project={PROJECT}", f"com.docker.compose.service={service}"]
        found = self.client.containers.list(all=True, filters={"label": labels})
        assert len(found) == 1, f"{service}: expected one container of project {PROJECT}, found {len(found)}"
        return found[0]

    def health(self, service: str) -> str:
        """The engine's view of the service's HEALTHCHECK: starting, healthy or unhealthy (or not running)."""
        state = self.container(service).attrs["State"]
        if not state.get("Running"):
            return "not running"
        return str(state.get("Health", {}).get("Status", "no healthcheck"))

    def wait_health(self, service: str, wanted: str, timeout: float) -> float:
        """Seconds it took the engine to report `wanted` for `service`."""
        began = time.monotonic()
        wait_for(lambda: self.health(service) == wanted, timeout, f"{wanted!r} health for {service}")
        return time.monotonic() - began

    def logs(self, service: str = "watcher", since: float | None = None) -> str:
        """The container's output (every incarnation of it), from `since` (a time.time()) when given."""
        raw = self.container(service).logs(since=since) if since is not None else self.container(service).logs()
        return raw.decode(errors="replace")

    def run(self, command: list[str], service: str = "watcher", environment: dict[str, str] | None = None) -> Exec:
        """Run `command` in the service's running container, as its user, with its environment (and
        `environment`: a way to hand a secret to a command without putting it in its arguments)."""
        result = self.container(service).exec_run(command, demux=True, environment=environment)
        out, err = result.output
        return Exec(result.exit_code, (out or b"").decode(errors="replace"), (err or b"").decode(errors="replace"))

    def watcher(self, *args: str) -> Exec:
        """`watcher ARGS` in the watcher container: the daemon's own configuration and state folder."""
        return self.run(["watcher", *args])

    # -- data, snapshots, restores ------------------------------------------------------------------

    def drop(self, files: dict[str, bytes], prefix: str = "t") -> str:
        """Write `files` (paths relative to a new folder) beside data/, then move that folder into data/ in
        one rename, so that the watcher never sees half a file; its path in the container."""
        name = f"{prefix}-{secrets.token_hex(3)}"
        built = self.staging / name
        for relative, content in files.items():
            path = built / relative
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o644)  # readable by the watcher's uid, whatever this process's umask
        for folder in [built, *(p for p in built.rglob("*") if p.is_dir())]:
            folder.chmod(0o755)
        built.rename(self.data / name)
        return f"/data/{name}"

    def remove(self, folder: str, timeout: float = 60.0) -> None:
        """Delete `folder` from data/ and wait until every target's latest snapshot is without it, so
        that the run this deletion starts is over before the next test looks for a run of its own."""
        shutil.rmtree(self.data / PurePosixPath(folder).relative_to("/data"), ignore_errors=True)
        for target in TARGETS:
            gone = functools.partial(lambda number: self.listed(number, folder) is None, target)
            wait_for(gone, timeout, f"a snapshot on target {target} without {folder}", explain=self.recent)

    def listed(self, target: int, folder: str, snapshot: str = "latest") -> list[dict[str, Any]] | None:
        """`watcher ls SNAPSHOT FOLDER --json --target N`; None while the folder is not in it."""
        result = self.watcher("ls", snapshot, folder, "--json", "--target", str(target))
        if result.code != 0:
            return None
        return json.loads(result.out)

    def wait_snapshot(self, target: int, folder: str, files: dict[str, bytes], timeout: float) -> str:
        """The id of the first snapshot seen on `target` whose `folder` holds `files` (by size): its
        latest one, polled until then."""
        expected = {f"{folder}/{relative}": len(content) for relative, content in files.items()}

        def probe() -> str | None:
            entries = self.listed(target, folder)
            if not entries:
                return None
            assert all(entry["repository"]["number"] == target for entry in entries), entries[:2]
            sizes = {entry["path"]: entry.get("size") for entry in entries if entry["type"] == "file"}
            if any(sizes.get(path) != size for path, size in expected.items()):
                return None
            return str(entries[0]["snapshot"])

        return wait_for(probe, timeout, f"snapshot on target {target} with the {len(files)} files of {folder}",
                        explain=self.recent)

    def recent(self, lines: int = 40) -> str:
        """The watcher's last log lines, for a failure message."""
        tail = self.container("watcher").logs(tail=lines).decode(errors="replace")
        return f"--- the watcher's last {lines} log lines ---\n{tail}"

    def restore(self, target: int, snapshot: str, *folders: str) -> dict[str, bytes]:
        """Restore `folders` of `snapshot` from `target` in the watcher container (`watcher restore`), then
        fetch them through the engine (get_archive): {path in the snapshot: content} of every file."""
        into = f"/tmp/restore-{secrets.token_hex(4)}"
        try:
            result = self.watcher("restore", snapshot, "--to", into, "--target", str(target), *folders)
            assert result.code == 0, f"restore from target {target} failed: {result}"
            stream, _ = self.container("watcher").get_archive(into)
            files: dict[str, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                for member in archive:
                    if member.isfile():
                        inside = PurePosixPath(member.name).relative_to(PurePosixPath(into).name)
                        handle = archive.extractfile(member)
                        assert handle is not None
                        files[f"/{inside}"] = handle.read()
            return files
        finally:
            self.run(["rm", "-rf", into])

    def restored_hashes(self, target: int, snapshot: str, folder: str) -> dict[str, str]:
        """Restore `folder` of `snapshot` from `target` in the watcher container and hash what it wrote
        there (`sha256sum`), so that hundreds of MiB need not come out: {path in the snapshot: sha256}."""
        into = f"/tmp/restore-{secrets.token_hex(4)}"
        try:
            result = self.watcher("restore", snapshot, "--to", into, "--target", str(target), folder)
            assert result.code == 0, f"restore from target {target} failed: {result}"
            hashed = self.run(["sh", "-c", 'cd "$1" && find . -type f -exec sha256sum {} +', "sh", into])
            assert hashed.code == 0, str(hashed)
            return {f"/{name[2:]}": digest for digest, name in
                    (line.split("  ", 1) for line in hashed.out.splitlines())}
        finally:
            self.run(["rm", "-rf", into])

    def wait_log(self, pattern: str, since: float, timeout: float) -> re.Match[str]:
        """The first line of the watcher's log since `since` (a time.time()) that matches `pattern`."""
        compiled = re.compile(pattern, re.M)
        return wait_for(lambda: compiled.search(self.logs(since=since)), timeout, f"log line {pattern!r}",
                        explain=self.recent)

    # -- MailDev ------------------------------------------------------------------------------------

    def mails(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.maildev}/email", timeout=10) as answer:
            return json.load(answer)

    def attachment(self, mail: dict[str, Any], attachment: dict[str, Any]) -> bytes:
        """An attachment's bytes; MailDev serves it under the name it generated (the same unless taken)."""
        url = f"{self.maildev}/email/{mail['id']}/attachment/{urllib.parse.quote(attachment['generatedFileName'])}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.read()


def _engine() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except (docker.errors.DockerException, OSError) as error:
        unavailable(f"no Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {error}")
        raise
    return client


def _compose_environment() -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(_STACK_PREFIXES)}
    environment["COMPOSE_PROJECT_NAME"] = PROJECT  # the -p of every command says it too
    return environment


def _check_compose(environment: dict[str, str]) -> None:
    try:
        version = subprocess.run(["docker", "compose", "version"], env=environment, capture_output=True, text=True,
                                 timeout=60, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        unavailable(f"`docker compose version` cannot run: {error}")
        return
    if version.returncode != 0:
        unavailable(f"`docker compose version` failed (Compose v2 missing?): {version.stderr.strip()[-500:]}")


def _copy_repository(folder: Path) -> None:
    """The files git tracks, as they are in the work tree (uncommitted edits included)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.fail(f"`git ls-files` failed in {ROOT}: {listed.stderr.decode(errors='replace')}")
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the work tree and not yet committed
        destination = folder / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination, follow_symlinks=False)


def _tail(stack: Stack, lines: int = 80) -> str:
    logs = stack.compose("logs", "--no-color", "--timestamps", "--tail", str(lines))
    return (logs.stdout + logs.stderr)[-12000:]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    client = _engine()
    environment = _compose_environment()
    _check_compose(environment)
    # Not under pytest's basetemp: another pytest run on this machine may rotate that away while the
    # stack still bind-mounts its data/ folder from it.
    folder = Path(tempfile.mkdtemp(prefix="watcher-test-stack-"))
    _copy_repository(folder)
    (folder / "data").mkdir(mode=0o755, exist_ok=True)  # the clone has it (data/.gitkeep)
    (folder / "data").chmod(0o755)  # the watcher's uid reads it, whatever this process's umask
    (folder / "staging").mkdir(mode=0o755)
    port = free_port()
    settings = {
        "BACKUP_DEBOUNCE_SECONDS": str(DEBOUNCE_SECONDS),
        "BACKUP_RETRIES": str(RETRIES),
        "BACKUP_RETRY_MAX_SECONDS": str(RETRY_MAX_SECONDS),
        "BACKUP_HEALTH_MAX_AGE_SECONDS": str(HEALTH_MAX_AGE_SECONDS),
        "WATCHER_HEALTHCHECK_INTERVAL": f"{HEALTHCHECK_INTERVAL_SECONDS}s",
        "MAILDEV_PORT": str(port),
        "MAIL_ON": "always",
    }
    (folder / ".env").write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    started = Stack(folder, client, environment, f"http://127.0.0.1:{port}")
    try:
        started.compose("down", "-v", "--timeout", "10")  # what an aborted earlier run of this project left
        began = time.monotonic()
        try:
            up = started.compose("up", "-d", "--build", "--wait", timeout=UP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`docker compose up` did not finish in {UP_TIMEOUT:g} s\n{_tail(started)}")
        if up.returncode != 0:
            pytest.fail(f"`docker compose up -d --build --wait` failed (exit {up.returncode}):\n"
                        f"{up.stderr[-6000:]}\n--- docker compose logs ---\n{_tail(started)}")
        print(f"\nwatcher-test stack up in {time.monotonic() - began:.1f} s")
        yield started
    finally:
        down = started.compose("down", "-v", "--timeout", "10")
        if down.returncode != 0:
            print(f"`docker compose -p {PROJECT} down -v` failed: {down.stderr[-2000:]}")
        client.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ready_stack(stack: Stack) -> Stack:
    """Every service running and healthy before the test: one that stopped a server and then failed
    must not fail the next."""
    for service in SERVICES:
        container = stack.container(service)
        if not container.attrs["State"].get("Running"):
            container.start()
    for service in SERVICES:
        stack.wait_health(service, "healthy", timeout=120)
    return stack
