"""The debouncer with a fake clock, and the daemon's small parts (no sockets, no sleeps)."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from watcher.daemon import PendingStore, worth_retrying
from watcher.errors import AuthError, BackendError, ConnectionLostError, IntegrityError, TemporaryFailureError
from watcher.health import HealthFile, verdict
from watcher.scan import Excluder
from watcher.watch import Batch, Debouncer, SourceWatcher, choose_mode


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nothing_pending_is_never_due():
    debouncer = Debouncer(5, 60, FakeClock())
    assert debouncer.due_in() is None
    assert not debouncer.take()


def test_due_after_the_quiet_period():
    clock = FakeClock()
    debouncer = Debouncer(5, 60, clock)
    debouncer.add(["/a"])
    clock.now += 3
    debouncer.add(["/b"])  # restarts the quiet period
    assert debouncer.due_in() == pytest.approx(5)
    clock.now += 4.9
    assert debouncer.due_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert debouncer.due_in() == 0
    assert debouncer.take().paths == {"/a", "/b"}
    assert debouncer.due_in() is None


def test_due_at_the_latest_max_delay_after_the_first_change():
    clock = FakeClock()
    debouncer = Debouncer(5, 20, clock)
    debouncer.add(["/busy"])
    for _ in range(10):  # a change every 2 s: never quiet
        clock.now += 2
        debouncer.add(["/busy"])
    assert debouncer.due_in() == 0  # 20 s after the first change


def test_changes_during_a_run_form_the_next_batch():
    clock = FakeClock()
    debouncer = Debouncer(1, 10, clock)
    debouncer.add(["/first"])
    clock.now += 1
    batch = debouncer.take()  # the run starts
    debouncer.add(["/during"])  # a change while it runs
    assert batch.paths == {"/first"}
    clock.now += 1
    assert debouncer.take().paths == {"/during"}


def test_full_rescan_requests_keep_their_reasons():
    debouncer = Debouncer(1, 10, FakeClock())
    debouncer.add(full=True, reason="overflow")
    batch = debouncer.take()
    assert batch.full and batch.reasons == ["overflow"]


def test_a_watchdog_warning_means_events_were_lost_so_a_full_rescan(tmp_path):
    debouncer = Debouncer(1, 10, FakeClock())
    watcher = SourceWatcher((tmp_path,), Excluder(()), "events", debouncer)
    watcher.start()
    try:
        logger = logging.getLogger("watchdog.observers.inotify_c")
        logger.warning("Inotify queue overflowed; filesystem events were lost")
    finally:
        watcher.stop()
    batch = debouncer.take()
    assert batch.full and "overflowed" in batch.reasons[0]


def test_watch_limit_reached_falls_back_to_polling_and_rescans(tmp_path, monkeypatch):
    from watcher import watch

    class NoWatches(watch.Observer):  # type: ignore[misc, valid-type]
        def schedule(self, *args, **kwargs):
            raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watch, "Observer", NoWatches)
    debouncer = Debouncer(1, 10, FakeClock())
    watcher = SourceWatcher((tmp_path,), Excluder(()), "events", debouncer, poll_seconds=0.1)
    watcher.start()
    try:
        assert isinstance(watcher.observers[str(tmp_path)], watch.PollingObserver)
    finally:
        watcher.stop()
    assert debouncer.take().full


def test_auto_mode_polls_network_file_systems(monkeypatch):
    from watcher import watch

    monkeypatch.setattr(watch, "file_system_type", lambda path: "nfs4")
    assert choose_mode("auto", Path("/mnt/nas")) == "poll"
    monkeypatch.setattr(watch, "file_system_type", lambda path: "ext4")
    assert choose_mode("auto", Path("/data")) == "events"
    assert choose_mode("poll", Path("/data")) == "poll"


@pytest.mark.parametrize(("error", "retried"), [
    (ConnectionLostError("x"), True),
    (TemporaryFailureError("x"), True),
    (BackendError("unknown"), True),
    (AuthError("x"), False),
    (IntegrityError("x"), False),
])
def test_which_run_failures_are_retried(error, retried):
    assert worth_retrying(error) is retried


def test_pending_changes_survive_a_restart(tmp_path):
    store = PendingStore(tmp_path / "pending.json")
    store.save(Batch({"/a", "/b"}, False))
    loaded = PendingStore(tmp_path / "pending.json").load()
    assert loaded.paths == {"/a", "/b"} and not loaded.full
    (tmp_path / "pending.json").write_text("{broken")
    assert not PendingStore(tmp_path / "pending.json").load()


def test_health_verdicts(tmp_path):
    assert verdict(tmp_path, 100)[0] is False  # no daemon ever ran here
    health = HealthFile(tmp_path)
    health.started()
    assert verdict(tmp_path, 100) == (True, f"healthy: first run under way (pid {os.getpid()})")
    health.run_finished(True)
    assert verdict(tmp_path, 100)[0]
    later = datetime.now(UTC) + timedelta(seconds=500)
    healthy, reason = verdict(tmp_path, 100, now=later)
    assert not healthy and "no run has succeeded for" in reason
    health.run_finished(False, "sftp://u@h/x: authentication failed")
    assert verdict(tmp_path, 100) == (False, "the last run failed: sftp://u@h/x: authentication failed")
    health.run_finished(True)
    health.stopped()
    assert verdict(tmp_path, 100)[1].endswith("is not running")
    state = json.loads((tmp_path / "health.json").read_text())
    state.update(stopped=False, pid=2**22 + 12345)
    (tmp_path / "health.json").write_text(json.dumps(state))
    assert not verdict(tmp_path, 100)[0]


def test_health_names_the_target_that_is_stale_or_failing(tmp_path):
    one, two = "target 1 (file:///b1)", "target 2 (sftp://u@h/b2)"
    health = HealthFile(tmp_path)
    health.started((one, two))
    health.run_finished(True, target=one)
    health.run_finished(True, target=two)
    assert verdict(tmp_path, 100)[0]
    health.run_finished(False, "sftp://u@h/b2: connection refused", target=two)
    assert verdict(tmp_path, 100) == (False, f"{two}: the last run failed: sftp://u@h/b2: connection refused")
    health.run_finished(True, target=two)
    state = json.loads((tmp_path / "health.json").read_text())
    state["targets"][two]["last_success"] = (datetime.now(UTC) - timedelta(seconds=500)).isoformat()
    (tmp_path / "health.json").write_text(json.dumps(state))
    healthy, reason = verdict(tmp_path, 100)
    assert not healthy and reason.startswith(f"{two}: no run has succeeded for"), reason
    health = HealthFile(tmp_path)
    health.started((one, two))  # a restart keeps each target's last success
    assert verdict(tmp_path, 100)[1].startswith(f"{two}: no run has succeeded for")


def several_targets_daemon(tmp_path, clock):
    from tests.helpers import make_tree
    from watcher.config import load_settings
    from watcher.daemon import Daemon

    source = make_tree(tmp_path / "src", {"a.txt": "alpha"})
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the second repository's folder should be")
    settings = load_settings({"BACKUP_SOURCES": str(source), "BACKUP_STATE_DIR": str(tmp_path / "state"),
                              "BACKUP_TARGET": f"file://{tmp_path}/one", "BACKUP_TARGET_2": f"file://{blocker}/two",
                              "BACKUP_HEALTH_MAX_AGE_SECONDS": "100", "BACKUP_RETRY_MAX_SECONDS": "30",
                              "BACKUP_RETRIES": "1"})
    daemon = Daemon(settings, clock)
    daemon.health.started(state.label for state in daemon.targets)
    return daemon


def test_each_target_has_its_own_back_off_and_its_own_health_runs(tmp_path):
    clock = FakeClock()
    daemon = several_targets_daemon(tmp_path, clock)
    one, two = daemon.targets
    for state in daemon.targets:
        state.pending.merge(Batch(full=True, reasons=["start-up"]))
    daemon.run_pass(daemon.targets)
    assert not one.pending and one.retry_at is None
    assert two.pending.full and two.retry_at == clock.now + 30  # its changes wait for it alone
    clock.now += 30
    assert daemon.due_targets() == [two]
    daemon.run_pass([two])
    clock.now += 21  # 51 s after target 1's run: its health run is due, whatever target 2's retries did
    assert daemon.due_targets() == [one]
    assert 0 < daemon.seconds_to_next() <= 9  # target 2's next try; never a busy loop
    daemon.stop.set()


def test_pending_changes_are_kept_per_target_and_an_old_pending_file_is_the_first_targets(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    PendingStore(state_dir / "pending.json").save(Batch({"/src/old"}, False))  # written before several targets
    daemon = several_targets_daemon(tmp_path, FakeClock())
    one, two = daemon.targets
    assert one.pending.paths == {"/src/old"} and not two.pending
    two.pending.merge(Batch({"/src/for-two"}))
    daemon.save_pending()
    assert json.loads((state_dir / "pending-2.json").read_text())["paths"] == ["/src/for-two"]
    assert json.loads((state_dir / "pending.json").read_text())["paths"] == ["/src/old"]
