"""Many hosts, one repository (issue 11, item 3), against a real SeaweedFS S3 gateway.

Three `watcher backup` processes, each with its own BACKUP_HOST and state folder, back up trees
that overlap (files every machine has, byte for byte, and files of its own) into one encrypted
repository, round after round, at the same time; meanwhile one place runs `watcher forget`
(BACKUP_KEEP_LAST=2) again and again, as the README's pattern has it. A `forget` or a backup may be
refused while the other holds its lock ("in use"): the loop counts them and tries again. At the end:
no backup was ever told that a `forget` removed what it relied on, every remaining snapshot of every
host restores byte for byte what that host had at that round, `check --read-data` passes, and each
blob is stored once, however many hosts had it (the figures are printed in one summary line).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.s3 import S3Server
from tests.helpers import describe_tree
from tests.unit.test_encryption import PASSWORD
from watcher import crypto
from watcher.cli import main
from watcher.repository import Protection, Repository

pytestmark = pytest.mark.timeout(180)

HOSTS = ("alpha", "bravo", "charlie")
ROUNDS = 6
KiB = 1024
_PREFIXES = ("BACKUP_", "SMTP_", "MAIL_", "AWS_")


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository is made in this process with a cheap key: the hosts' processes read its stored
    parameters, so none of them spends half a second in scrypt."""
    monkeypatch.setattr(crypto, "tuned_params", lambda seconds=crypto.KDF_SECONDS: crypto.KdfParams(1 << 10, 8, 1))


@dataclass
class Tally:
    """What happened, for the summary line and the assertions."""

    backups: int = 0
    backups_refused: int = 0
    forgets: int = 0
    forgets_refused: int = 0
    removed_snapshots: int = 0
    deleted_packs: int = 0
    repacked_packs: int = 0
    failures: list[str] = field(default_factory=list)
    expected: dict[str, tuple[str, Path, dict[str, tuple]]] = field(default_factory=dict)  # id -> host, source, tree
    guard: threading.Lock = field(default_factory=threading.Lock)


def shared_bytes(name: str, size: int) -> bytes:
    """Content every host has, byte for byte (random: compression does not blur the figures)."""
    return random.Random(name).randbytes(size)


def change_tree(source: Path, host: str, round_number: int) -> None:
    """Round 0 lays down the tree; each round adds a shared and an own file, changes one, and from
    round 2 on removes those of two rounds before."""
    shared, own = source / "shared", source / "own"
    if round_number == 0:
        shared.mkdir(parents=True)
        own.mkdir()
        (shared / "base.bin").write_bytes(shared_bytes("base", 1536 * KiB))  # several chunks
        (shared / "docs").mkdir()
        for number in range(5):
            (shared / "docs" / f"doc{number}.txt").write_text(f"shared document {number}\n" * 50)
    (shared / f"round{round_number}.bin").write_bytes(shared_bytes(f"round{round_number}", 600 * KiB))
    (own / "notes.txt").write_text(f"{host}, round {round_number}\n" * (round_number + 1))
    (own / f"r{round_number}.bin").write_bytes(random.Random(f"{host}{round_number}").randbytes(200 * KiB))
    if round_number >= 2:  # files come and go: what only forgotten snapshots hold is removed for real
        (shared / f"round{round_number - 2}.bin").unlink()
        (own / f"r{round_number - 2}.bin").unlink()
    if round_number == 3:
        (shared / "docs" / "doc0.txt").unlink()


def base_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith(_PREFIXES)}


def watcher(env: dict[str, str], *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def host_loop(host: str, env: dict[str, str], source: Path, tally: Tally, start: threading.Barrier,
              cwd: Path) -> None:
    """One machine: change its tree, back up (again while refused), remember what the snapshot holds."""
    start.wait()
    for round_number in range(ROUNDS):
        change_tree(source, host, round_number)
        while True:
            done = watcher(env, "backup", cwd=cwd)
            with tally.guard:
                if done.returncode == 0:
                    tally.backups += 1
                    saved = re.search(r"snapshot (\S+) saved", done.stdout)
                    if saved is None:
                        tally.failures.append(f"{host}: no snapshot in {done.stdout!r}")
                    else:
                        tally.expected[saved.group(1)] = (host, source, describe_tree(source))
                    break
                if done.returncode == 1 and "in use by" in done.stderr:
                    tally.backups_refused += 1
                    continue
                tally.failures.append(f"{host} round {round_number}: exit {done.returncode}: {done.stderr[-800:]}")
                return


def forget_loop(env: dict[str, str], tally: Tally, stop: threading.Event, cwd: Path) -> None:
    """The one place that forgets: again and again while the hosts back up."""
    while not stop.is_set():
        done = watcher(env, "forget", cwd=cwd)
        with tally.guard:
            if done.returncode == 0:
                tally.forgets += 1
                said = re.search(r"removed (\d+) snapshots; (\d+) packs deleted, (\d+) repacked", done.stdout)
                if said is None:
                    tally.failures.append(f"forget said {done.stdout!r}")
                    continue
                tally.removed_snapshots += int(said.group(1))
                tally.deleted_packs += int(said.group(2))
                tally.repacked_packs += int(said.group(3))
            elif done.returncode == 1 and "in use by" in done.stderr:
                tally.forgets_refused += 1
            else:
                tally.failures.append(f"forget: exit {done.returncode}: {done.stderr[-800:]}")
        stop.wait(0.05)


def stored_rows(server: S3Server, bucket: str, state: Path) -> tuple[dict[str, int], int]:
    """(how many index rows name each blob, bytes of all packs), read as a fresh reader."""
    backend = server.backend(bucket, "repo", tls=False)
    repository = Repository(backend, state, Protection(PASSWORD, "auto", "auto", server=True))
    try:
        backend.open()
        repository.open()
        repository.load_index()
        rows: dict[str, int] = {}
        for entries in repository.pack_blobs.values():
            for entry in entries:
                rows[entry.id] = rows.get(entry.id, 0) + 1
        pack_bytes = sum(info.size for info in backend.list("packs"))
        return rows, pack_bytes
    finally:
        repository.close()


def test_three_hosts_back_up_into_one_repository_while_forget_runs_again_and_again(
        s3_server, tmp_path, capsys, record_property):
    started = time.monotonic()
    bucket = s3_server.bucket("hosts")
    target = {"BACKUP_REPOSITORY_PASSWORD": PASSWORD, **s3_server.environment(bucket)}
    seed_source = tmp_path / "seed"
    (seed_source / "hello").mkdir(parents=True)
    (seed_source / "hello" / "a.txt").write_text("the first machine made the repository")
    checker = {**target, "BACKUP_SOURCES": str(seed_source), "BACKUP_STATE_DIR": str(tmp_path / "checker"),
               "BACKUP_HOST": "seed"}
    assert main(["backup"], checker) == 0  # made here, with the cheap key
    capsys.readouterr()

    tally = Tally()
    environments = {}
    for host in HOSTS:
        (tmp_path / host).mkdir()
        environments[host] = {**base_environment(), **target, "BACKUP_HOST": host,
                              "BACKUP_SOURCES": str(tmp_path / host / "data"),
                              "BACKUP_STATE_DIR": str(tmp_path / host / "state")}
    # The one place that forgets needs no sources: the target, the password and the policy.
    forgetter = {**base_environment(), **target, "BACKUP_KEEP_LAST": "2", "BACKUP_STATE_DIR": str(tmp_path / "admin")}
    start, stop = threading.Barrier(len(HOSTS)), threading.Event()
    hosts = [threading.Thread(target=host_loop, name=f"host-{host}",
                              args=(host, environments[host], tmp_path / host / "data", tally, start, tmp_path / host))
             for host in HOSTS]
    forget = threading.Thread(target=forget_loop, name="forget", args=(forgetter, tally, stop, tmp_path))
    for thread in hosts:
        (tmp_path / thread.name.split("-")[1] / "data").mkdir()
        thread.start()
    forget.start()
    try:
        for thread in hosts:
            thread.join(timeout=150)
    finally:
        stop.set()
        forget.join(timeout=150)
    concurrent_seconds = time.monotonic() - started
    assert not tally.failures, "\n".join(tally.failures)
    assert tally.backups == len(HOSTS) * ROUNDS

    before, _ = stored_rows(s3_server, bucket, tmp_path / "checker")
    copies = sum(count > 1 for count in before.values())  # uploaded by hosts at the same time, or by a refused run

    # One last forget, alone: each host keeps its last two snapshots (the seed its one).
    final = watcher(forgetter, "forget", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert main(["snapshots", "--json"], checker) == 0
    listed = json.loads(capsys.readouterr().out)
    by_host: dict[str, list[str]] = {}
    for snapshot in listed:
        by_host.setdefault(snapshot["host"], []).append(snapshot["id"])
    assert {host: len(ids) for host, ids in by_host.items()} == {**{host: 2 for host in HOSTS}, "seed": 1}

    # Every snapshot of every host restores byte for byte what that host had at that round.
    restored = 0
    for snapshot in listed:
        if snapshot["host"] == "seed":
            continue
        host, source, expected = tally.expected[snapshot["id"]]
        assert snapshot["host"] == host
        into = tmp_path / "restore" / snapshot["id"]
        assert main(["restore", snapshot["id"], "--to", str(into)], checker) == 0, capsys.readouterr().err
        assert describe_tree(into / source.relative_to("/")) == expected, f"{host} {snapshot['id']}"
        shutil.rmtree(into)
        restored += 1
    capsys.readouterr()
    assert main(["check", "--read-data"], checker) == 0, capsys.readouterr().out
    capsys.readouterr()

    # Stored once: no blob in two packs, and the packs hold about the unique content of what is kept.
    rows, pack_bytes = stored_rows(s3_server, bucket, tmp_path / "checker")
    capsys.readouterr()
    duplicated = {blob: count for blob, count in rows.items() if count > 1}
    assert not duplicated, f"{len(duplicated)} blobs stored more than once"
    kept = [tally.expected[snapshot["id"]][2] for snapshot in listed if snapshot["host"] != "seed"]
    contents = [entry[1] for tree in kept for entry in tree.values() if entry[0] == "file"]
    logical, unique = sum(map(len, contents)), sum(map(len, set(contents)))
    holders: dict[bytes, set[str]] = {}
    for snapshot in listed:
        if snapshot["host"] != "seed":
            host, _, tree = tally.expected[snapshot["id"]]
            for entry in tree.values():
                if entry[0] == "file":
                    holders.setdefault(entry[1], set()).add(host)
    shared = sum(len(content) for content, owners in holders.items() if len(owners) > 1)
    assert pack_bytes < unique * 1.3 + 256 * KiB, (pack_bytes, unique)
    summary = (f"many hosts over S3: {len(HOSTS)} hosts x {ROUNDS} rounds = {tally.backups} backups "
               f"({tally.backups_refused} refused while a forget ran); forgets {tally.forgets} ran, "
               f"{tally.forgets_refused} refused (in use), {tally.removed_snapshots} snapshots forgotten, "
               f"{tally.deleted_packs} packs deleted, {tally.repacked_packs} repacked; "
               f"{restored} snapshots restored byte for byte; kept snapshots hold {logical / KiB / KiB:.1f} MiB, "
               f"{unique / KiB / KiB:.1f} MiB unique ({shared / KiB / KiB:.1f} MiB of it on several hosts), "
               f"packs {pack_bytes / KiB / KiB:.1f} MiB; {copies} blobs held twice before the last forget, "
               f"none after; {concurrent_seconds:.0f} s concurrent")
    record_property("many_hosts", summary)
    with capsys.disabled():
        print("\n" + summary)
    assert tally.forgets >= 1, summary

