"""Which snapshot is the parent, `latest` and retention's newest, with snapshots that lie about their time
or cannot be read (issue 12, items 2 and 11)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers import make_tree, open_repository
from tests.unit.test_cli import Runner, restore_root_logger  # noqa: F401 (a fixture)
from tests.unit.test_config import base_env
from watcher.actions.backup import BackupOptions, run_backup
from watcher.actions.restore import run_restore
from watcher.backends.memory import MemoryBackend
from watcher.config import Retention
from watcher.errors import RepositoryError
from watcher.repository import Repository
from watcher.retention import decide
from watcher.snapshot import Snapshot, encode_snapshot, new_snapshot_id

A_YEAR = timedelta(days=365)


def plant(repository: Repository, snapshot: Snapshot, *, version: int = 1) -> Snapshot:
    """Write a snapshot document as another watcher (or a wrong clock) would have."""
    document = json.loads(encode_snapshot(snapshot))
    document["version"] = version
    repository.backend.put_bytes(f"snapshots/{snapshot.id}", json.dumps(document).encode())
    return snapshot


def future_copy(snapshot: Snapshot, ahead: timedelta = A_YEAR) -> Snapshot:
    """The same content, dated `ahead` of now: what a host with a wrong clock once saved."""
    moment = datetime.now(UTC) + ahead
    return replace(snapshot, id=new_snapshot_id(moment), time=moment)


def restored(repository: Repository, snapshot: Snapshot, to: Path, source: Path) -> dict[str, str]:
    run_restore(repository, snapshot, to)
    root = to / str(source).lstrip("/")
    return {str(path.relative_to(root)): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"x.txt": "x0", "y.txt": "y0"})


@pytest.fixture
def history(tmp_path, source) -> tuple[Repository, BackupOptions, Snapshot, Snapshot]:
    """Two snapshots of host h: the old one has y.txt = y0, this host's last one y.txt = y1."""
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    options = BackupOptions((source,), host="h")
    old = run_backup(repository, options).snapshot
    (source / "y.txt").write_text("y1")
    mine = run_backup(repository, options).snapshot
    assert old is not None and mine is not None
    return repository, options, old, mine


# -- item 2: a snapshot dated in the future ---------------------------------------------------------


def test_a_future_dated_snapshot_is_not_the_parent_of_an_event_driven_run(tmp_path, source, history):
    repository, options, old, mine = history
    plant(repository, future_copy(old))  # old content (y0), dated a year ahead, same host and sources
    (source / "x.txt").write_text("x1")
    result = run_backup(repository, options, changed=[str(source / "x.txt")])
    assert result.parent is not None and result.parent.id == mine.id, "the parent is this host's last snapshot"
    assert result.snapshot is not None
    assert restored(repository, result.snapshot, tmp_path / "out", source) == {"x.txt": "x1", "y.txt": "y1"}


def test_without_the_record_an_event_driven_run_walks_everything(tmp_path, source, history):
    repository, options, old, mine = history
    plant(repository, future_copy(old))
    records = list((tmp_path / "state").rglob("last-snapshot.json"))
    assert len(records) == 1
    records[0].unlink()
    (source / "x.txt").write_text("x1")
    result = run_backup(repository, options, changed=[str(source / "x.txt")])
    assert result.parent is not None and result.parent.id == mine.id, "the newest not dated in the future"
    assert result.full_scan, "a parent that is not the recorded one is never trusted with untouched entries"
    assert result.snapshot is not None
    assert restored(repository, result.snapshot, tmp_path / "out", source) == {"x.txt": "x1", "y.txt": "y1"}
    again = run_backup(repository, options, changed=[str(source / "x.txt")])
    assert again.snapshot is None and not again.full_scan, "the run recorded its snapshot: the next one trusts it"


def test_a_record_naming_a_forgotten_snapshot_falls_back(tmp_path, source, history):
    repository, options, old, mine = history
    repository.backend.delete(f"snapshots/{mine.id}")  # as a `forget` elsewhere might
    (source / "x.txt").write_text("x1")
    result = run_backup(repository, options, changed=[str(source / "x.txt")])
    assert result.parent is not None and result.parent.id == old.id
    assert result.full_scan
    assert result.snapshot is not None
    assert restored(repository, result.snapshot, tmp_path / "out", source) == {"x.txt": "x1", "y.txt": "y1"}


def test_a_record_that_cannot_be_replaced_stops_the_run_before_it_saves(tmp_path, source, history):
    repository, options, _old, mine = history
    (record,) = (tmp_path / "state").rglob("last-snapshot.json")
    record.unlink()
    (record / "in-the-way").mkdir(parents=True)  # neither replaced nor removed, even by root
    (source / "x.txt").write_text("x1")
    with pytest.raises(RepositoryError, match="cannot record the last snapshot"):
        run_backup(repository, options)
    assert [snapshot.id for snapshot in repository.list_snapshots()][-1] == mine.id, "nothing saved"


def test_latest_passes_over_a_future_dated_snapshot_with_a_warning(history, caplog):
    repository, _options, old, mine = history
    future = plant(repository, future_copy(old))
    with caplog.at_level(logging.WARNING):
        assert repository.find_snapshot("latest").id == mine.id
    assert [record.getMessage() for record in caplog.records if future.id in record.getMessage()], caplog.text
    assert repository.find_snapshot(future.id).id == future.id, "asked for by id, it is given"


def test_latest_is_a_future_dated_snapshot_when_no_other_exists(tmp_path, source):
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    only = run_backup(repository, BackupOptions((source,), host="h")).snapshot
    assert only is not None
    future = plant(repository, future_copy(only))
    repository.backend.delete(f"snapshots/{only.id}")
    assert repository.find_snapshot("latest").id == future.id


def test_a_few_seconds_ahead_is_no_future(tmp_path, source):
    repository = open_repository(MemoryBackend(), tmp_path / "state")
    only = run_backup(repository, BackupOptions((source,), host="h")).snapshot
    assert only is not None
    ahead = plant(repository, future_copy(only, timedelta(seconds=30)))
    assert repository.find_snapshot("latest").id == ahead.id


# -- retention with a future-dated snapshot, and what a run just saved -------------------------------


def snapshot_at(name: str, moment: datetime, host: str = "h") -> Snapshot:
    return Snapshot(name, moment, host, ("/src",), "t")


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def kept(decisions) -> dict[str, list[str]]:
    return {decision.snapshot.id: decision.reasons for decision in decisions if decision.keep}


def test_a_future_dated_snapshot_takes_no_place_of_the_new_ones():
    snapshots = [snapshot_at(f"s{i}", NOW - timedelta(hours=3 - i)) for i in range(3)]
    snapshots.append(snapshot_at("future", NOW + A_YEAR))
    decisions = decide(snapshots, Retention(last=2, daily=1), now=NOW)
    assert kept(decisions) == {"s1": ["last"], "s2": ["newest", "last", "daily"], "future": ["dated in the future"]}


def test_retention_keeps_the_snapshot_a_run_just_saved():
    snapshots = [snapshot_at("earlier-clock", NOW - timedelta(hours=1)), snapshot_at("later", NOW)]
    decisions = decide(snapshots, Retention(last=1), protected={"earlier-clock"}, now=NOW)
    assert kept(decisions) == {"earlier-clock": ["just saved"], "later": ["newest", "last"]}


# -- through the command line, on a file:// repository ------------------------------------------------


@pytest.fixture
def cli(capsys, tmp_path, source):
    env = {**base_env({"src": str(source), "tmp": str(tmp_path)}), "BACKUP_HOST": "h"}
    return Runner(capsys, env)


def repository_folder(cli: Runner) -> Path:
    return Path(cli.env["BACKUP_TARGET"].removeprefix("file://"))


def plant_file(cli: Runner, snapshot_id: str, *, version: int = 1, ahead: timedelta = timedelta(0),
               host: str | None = None) -> str:
    """Copy snapshot `snapshot_id` under a new id, with another version, date or host."""
    folder = repository_folder(cli) / "snapshots"
    document = json.loads((folder / snapshot_id).read_text())
    moment = datetime.now(UTC) + ahead
    new_id = new_snapshot_id(moment)
    document.update(version=version, time=moment.isoformat(), host=host or document["host"])
    (folder / new_id).write_text(json.dumps(document))
    return new_id


def restored_files(cli: Runner, source: Path, to: Path) -> dict[str, str]:
    cli.ok("restore", "latest", "--to", str(to))
    root = to / str(source).lstrip("/")
    return {str(path.relative_to(root)): path.read_text() for path in sorted(root.rglob("*")) if path.is_file()}


def test_new_snapshots_survive_keep_last_1_beside_a_future_dated_one(cli, source, tmp_path):
    cli.env["BACKUP_KEEP_LAST"] = "1"
    cli.ok("backup")
    (first,) = cli.snapshot_ids()
    future = plant_file(cli, first, ahead=A_YEAR)
    for round_number in (1, 2):
        (source / "x.txt").write_text(f"x{round_number}")
        out = cli.ok("backup")
        saved = out.split()[1]
        assert saved in cli.snapshot_ids(), f"round {round_number}: the snapshot just saved was forgotten"
    assert sorted(cli.snapshot_ids()) == sorted([saved, future]), "last 1, and the future-dated one is kept"
    assert restored_files(cli, source, tmp_path / "out") == {"x.txt": "x2", "y.txt": "y0"}


# -- item 11: a snapshot this watcher cannot read -----------------------------------------------------


@pytest.fixture
def with_unreadable(cli, source):
    """A first snapshot, and a copy of it in the format of a newer watcher on another host."""
    cli.ok("backup")
    (first,) = cli.snapshot_ids()
    unreadable = plant_file(cli, first, version=2, host="newer")
    return first, unreadable


def lines_naming(text: str, snapshot_id: str) -> list[str]:
    return [line for line in text.splitlines() if snapshot_id in line]


def test_backup_skips_a_snapshot_it_cannot_read_with_one_warning(cli, with_unreadable, source):
    _first, unreadable = with_unreadable
    (source / "x.txt").write_text("x1")
    code, out, err = cli("backup")
    assert code == 0, (out, err)
    assert "saved" in out
    assert len(lines_naming(err, unreadable)) == 1, err
    assert len(cli.snapshot_ids()) == 2


def test_restore_latest_skips_a_snapshot_it_cannot_read(cli, with_unreadable, source, tmp_path):
    first, unreadable = with_unreadable
    code, out, err = cli("restore", "latest", "--to", str(tmp_path / "out"))
    assert code == 0, (out, err)
    assert first in out
    assert len(lines_naming(err, unreadable)) == 1, err


def test_a_snapshot_it_cannot_read_asked_for_by_id_is_one_error(cli, with_unreadable, tmp_path):
    _first, unreadable = with_unreadable
    for argv in (("ls", unreadable), ("restore", unreadable[:20], "--to", str(tmp_path / "out"))):
        code, out, err = cli(*argv)
        assert code == 1 and out == ""
        (line,) = err.splitlines()
        assert line.startswith("error:") and unreadable in line and "version 2" in line


def test_snapshots_lists_what_it_can_and_warns_about_the_rest(cli, with_unreadable):
    first, unreadable = with_unreadable
    code, out, err = cli("snapshots")
    assert code == 0
    assert first in out and unreadable not in out
    assert "1 snapshots; 1 more cannot be read" in out
    assert len(lines_naming(err, unreadable)) == 1, err
    code, out, err = cli("snapshots", "--json")
    assert code == 0 and [snapshot["id"] for snapshot in json.loads(out)] == [first]
    assert len(lines_naming(err, unreadable)) == 1, err


def test_check_reports_a_snapshot_it_cannot_read(cli, with_unreadable):
    _first, unreadable = with_unreadable
    code, out, _err = cli("check")
    assert code == 1
    assert [line for line in lines_naming(out, unreadable) if line.startswith("damaged:")], out


def test_forget_never_prunes_beside_a_snapshot_it_cannot_read(cli, with_unreadable, source, tmp_path):
    first, unreadable = with_unreadable
    (source / "x.txt").write_text("x1")
    cli.ok("backup")
    packs = repository_folder(cli) / "packs"
    before = sorted(path.name for path in packs.rglob("*") if path.is_file())
    cli.env["BACKUP_KEEP_LAST"] = "1"
    code, out, err = cli("forget")
    assert code == 3, (out, err)
    assert len([line for line in out.splitlines() if "not pruned" in line]) == 1, out
    assert sorted(path.name for path in packs.rglob("*") if path.is_file()) == before, "no pack deleted"
    assert first not in cli.snapshot_ids(), "forgetting readable snapshots removes only their small files"
    assert (repository_folder(cli) / "snapshots" / unreadable).exists()
    code, out, _err = cli("check", "--read-data")
    assert code == 1
    damaged = [line for line in out.splitlines() if line.startswith("damaged:")]
    assert len(damaged) == 1 and unreadable in damaged[0], "the one problem is the snapshot it cannot read"
