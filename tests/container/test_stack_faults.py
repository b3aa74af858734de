"""The stack under faults (README "Docker", "The daemon"): a server that goes away and comes back, a
`docker compose stop`, and a `docker kill` in the middle of a large run. These stop, kill and restart
containers, so they run after test_stack.py (modules run in name order), on the same stack.
"""

from __future__ import annotations

import hashlib
import os
import re
import time

import pytest

from tests.container.conftest import (
    DEBOUNCE_SECONDS,
    HEALTH_MAX_AGE_SECONDS,
    HEALTHCHECK_INTERVAL_SECONDS,
    RETRY_MAX_SECONDS,
    TARGETS,
    Exec,
    Stack,
    wait_for,
)

pytestmark = pytest.mark.timeout(1500)  # run alone, the first test builds the images

ARRIVAL_SECONDS = DEBOUNCE_SECONDS + 14
MiB = 1024 * 1024


def _wave(name: str) -> dict[str, bytes]:
    return {f"{name}.txt": f"{name}\n".encode() * 500, f"sub/{name}.bin": os.urandom(300_000)}


def test_a_server_down_fails_its_target_alone_and_it_catches_up(ready_stack: Stack) -> None:
    """With the `sftp` container stopped, changes keep reaching the FTPS target; a failure mail names
    the SFTP target; the watcher's engine health turns unhealthy within its configured age. Once `sftp`
    is started again, target 1 gets every change made meanwhile, byte for byte, and health comes back."""
    sftp = ready_stack.container("sftp")
    mailed_before = {mail["id"] for mail in ready_stack.mails()}
    stopped_at = time.monotonic()
    sftp.stop(timeout=10)
    try:
        waves = {}
        for name in ("down-a", "down-b"):
            files = _wave(name)
            folder = ready_stack.drop(files, name)
            waves[folder] = files
            ready_stack.wait_snapshot(2, folder, files, timeout=ARRIVAL_SECONDS)

        def failure_mail() -> dict | None:
            return next((mail for mail in ready_stack.mails() if mail["id"] not in mailed_before
                         and mail["subject"].startswith("Error Backup on watcher")
                         and f"target 1 ({TARGETS[1]}) failed" in mail["subject"]), None)

        mail = wait_for(failure_mail, 60, "failure mail naming target 1", interval=0.5, explain=ready_stack.recent)
        assert "Backup FAILED on watcher for 1 of 2 targets." in mail["text"], mail["text"]
        assert f"  target 1 ({TARGETS[1]}): FAILED: " in mail["text"], mail["text"]

        deadline = HEALTH_MAX_AGE_SECONDS + HEALTHCHECK_INTERVAL_SECONDS + 15
        left = deadline - (time.monotonic() - stopped_at)
        ready_stack.wait_health("watcher", "unhealthy", timeout=max(left, 0.0))
        print(f"watcher unhealthy {time.monotonic() - stopped_at:.1f} s after sftp stopped")
        health = ready_stack.watcher("health")
        assert health.code == 1 and "target 1" in health.out + health.err, str(health)
    finally:
        sftp.start()

    back = time.monotonic()
    ready_stack.wait_health("sftp", "healthy", timeout=60)
    snapshot = ""
    for folder, files in waves.items():
        snapshot = ready_stack.wait_snapshot(1, folder, files, timeout=RETRY_MAX_SECONDS + 30)
    restored = ready_stack.restore(1, snapshot, *waves)
    expected = {f"{folder}/{relative}": content
                for folder, files in waves.items() for relative, content in files.items()}
    assert restored.keys() == expected.keys()
    assert all(restored[path] == content for path, content in expected.items())
    ready_stack.wait_health("watcher", "healthy", timeout=RETRY_MAX_SECONDS + 30)
    print(f"target 1 caught up and healthy {time.monotonic() - back:.1f} s after sftp started")


def test_compose_stop_ends_the_watcher_cleanly_within_10_seconds(ready_stack: Stack) -> None:
    """`docker compose stop` (SIGTERM, SIGKILL after 10 s) as a run of 64 MiB starts: the daemon ends in
    well under 10 s with exit status 0, having said so; started again, its next run backs the files up."""
    files = {"stop.bin": os.urandom(64 * MiB)}
    since = time.time()
    folder = ready_stack.drop(files, "stop")
    ready_stack.wait_log(r"run started", since, timeout=ARRIVAL_SECONDS)
    watcher = ready_stack.container("watcher")
    began = time.monotonic()
    stopped = ready_stack.compose("stop", "watcher")
    took = time.monotonic() - began
    assert stopped.returncode == 0, stopped.stderr
    watcher.reload()
    print(f"watcher stopped in {took:.2f} s")
    state = watcher.attrs["State"]
    assert (state["Running"], state["ExitCode"]) == (False, 0), state
    assert took < 10, f"the watcher took {took:.1f} s to stop"
    assert "watcher daemon stopped" in ready_stack.logs(since=since)

    watcher.start()
    ready_stack.wait_health("watcher", "healthy", timeout=60)
    for target in TARGETS:
        ready_stack.wait_snapshot(target, folder, files, timeout=60)
    ready_stack.remove(folder)


def test_a_kill_mid_run_leaves_both_repositories_sound_and_unlocked(ready_stack: Stack) -> None:
    """`docker kill` of the watcher while a large run uploads: started again, the next run backs
    everything up; `check --read-data` passes on both targets, every file restores byte for byte (sha256
    in the container), and `forget` is not kept out by the lock the killed process left (a dead holder's
    lock would otherwise block it for 30 minutes)."""
    files = {f"part-{n}.bin": os.urandom(64 * MiB) for n in range(4)}
    hashes = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    watcher = ready_stack.container("watcher")
    first_start = watcher.attrs["State"]["StartedAt"]
    since = time.time()
    folder = ready_stack.drop(files, "kill")
    try:
        started = ready_stack.wait_log(r"^.*run started.*$", since, timeout=ARRIVAL_SECONDS)
        time.sleep(1)  # well into the run: its lock taken, packs on their way
        watcher.kill()
        killed_at = time.time()
        before_kill = ready_stack.container("watcher").logs(since=since, until=killed_at).decode(errors="replace")
        after_start = before_kill[before_kill.rindex(started.group(0)):]
        assert not re.search(r"snapshot \S+ saved", after_start), f"the run had finished:\n{after_start}"

        # The engine may restart it itself (restart: unless-stopped); if it has not, start it.
        def restarted() -> bool:
            state = ready_stack.container("watcher").attrs["State"]
            return state["Running"] and state["StartedAt"] != first_start

        if not restarted():
            state = ready_stack.container("watcher").attrs["State"]
            if not state["Running"]:
                ready_stack.container("watcher").start()
        wait_for(restarted, 30, "the watcher running again")
        ready_stack.wait_health("watcher", "healthy", timeout=60)

        snapshots = {target: ready_stack.wait_snapshot(target, folder, files, timeout=120) for target in TARGETS}
        print(f"both targets have the files {time.time() - killed_at:.1f} s after the kill")
        dead_lock = r"removed the lock of a backup or check on watcher \(pid \d+\) since .*: that process has ended"
        assert re.search(dead_lock, ready_stack.logs(since=killed_at)), ready_stack.recent()

        for target, snapshot in snapshots.items():
            check = ready_stack.watcher("check", "--read-data", "--target", str(target))
            assert check.code == 0, f"target {target}: {check}"
            restored = ready_stack.restored_hashes(target, snapshot, folder)
            assert restored == {f"{folder}/{name}": digest for name, digest in hashes.items()}, f"target {target}"

            # The daemon's own runs take the lock briefly: try again for a while, far less than the
            # 30 minutes a dead holder's lock would keep `forget` out.
            def forgotten(target: int = target) -> Exec | None:
                forget = ready_stack.watcher("forget", "--target", str(target))
                return forget if forget.code == 0 or "in use" not in forget.out + forget.err else None

            forget = wait_for(forgotten, 30, f"`watcher forget --target {target}` not kept out by a lock")
            assert forget.code == 0, f"target {target}: {forget}"
            assert "in use" not in forget.out + forget.err, str(forget)
    finally:
        ready_stack.remove(folder)
