"""Crafted values in repository objects, against every command that reads them.

The server is not trusted. Each case plants one object with one bad value (1e999, 2**70, a
list for a dict, a time without a zone, NUL in a link target, an id that is not one) and runs
the commands that read it through the real CLI, in process: each must end in one clear line
naming the object, with its documented exit status (SPEC: 1 for a damaged repository), never
a traceback; `restore` reports the bad entry and restores the rest; `check` reports it and goes on.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.crafting import Change, Crafter
from tests.unit.test_cli import make_tree
from watcher import cli

INF = float("inf")  # what json gives for 1e999
HEX = "ab" * 32
BIG = 2**70


def entry(which: str, **values: Any) -> Change:
    """Set fields of the entry called `which` in a tree document."""

    def change(document: dict[str, Any]) -> None:
        for item in document["entries"]:
            if item["name"] == which:
                item.update(values)

    return change


def without(name: str, key: str) -> Change:
    def change(document: dict[str, Any]) -> None:
        for item in document["entries"]:
            if item["name"] == name:
                del item[key]

    return change


def replaced(name: str, value: object) -> Change:
    def change(document: dict[str, Any]) -> None:
        document["entries"] = [value if item["name"] == name else item for item in document["entries"]]

    return change


def field(key: str, value: object) -> Change:
    def change(document: dict[str, Any]) -> dict[str, Any]:
        document[key] = value
        return document

    return change


def summary(**values: Any) -> Change:
    def change(document: dict[str, Any]) -> None:
        document["summary"].update(values)

    return change


def chunker(**values: Any) -> Change:
    def change(document: dict[str, Any]) -> dict[str, Any]:
        document["chunker"].update(values)
        return document

    return change


# One bad value in one entry of the source folder (or, for `sub:`, in the tree of its folder `sub`).
ENTRY_CASES: dict[str, Change] = {
    "mode-2**40": entry("a.txt", mode=2**40),
    "mode-1e999": entry("a.txt", mode=INF),
    "mode-string": entry("a.txt", mode="420"),
    "mode-bool": entry("a.txt", mode=True),
    "mode-null": entry("a.txt", mode=None),
    "mode-missing": without("a.txt", "mode"),
    "mtime-2**200": entry("a.txt", mtime_ns=2**200),  # 2**70 is clamped: see the test below
    "mtime-1e999": entry("a.txt", mtime_ns=INF),
    "mtime-float": entry("a.txt", mtime_ns=1.5),
    "uid-2**40": entry("a.txt", uid=2**40),
    "gid-negative": entry("a.txt", gid=-1),
    "size-2**70": entry("a.txt", size=BIG),
    "size-string": entry("a.txt", size="6"),
    "content-string": entry("a.txt", content=HEX),
    "content-not-hex": entry("a.txt", content=["zz" * 32]),
    "content-short-id": entry("a.txt", content=["ab"]),
    "content-number": entry("a.txt", content=[5]),
    "content-list-in-list": entry("a.txt", content=[[HEX]]),
    "subtree-path": entry("sub", subtree="../../etc/passwd"),
    "subtree-number": entry("sub", subtree=5),
    "subtree-list": entry("sub", subtree=[HEX]),
    "target-nul": entry("link", target="a\0b"),
    "target-number": entry("link", target=5),
    "target-missing": without("link", "target"),
    "target-lone-surrogate": entry("link", target="\ud800"),
    "name-number": entry("a.txt", name=5),
    "name-list": entry("a.txt", name=["a.txt"]),
    "name-lone-surrogate": entry("a.txt", name="a\ud800"),
    "type-number": entry("a.txt", type=5),
    "entry-a-list": replaced("a.txt", [1, 2]),
    "entry-a-string": replaced("a.txt", "a.txt"),
}
TREE_CASES: dict[str, Change] = {  # the whole tree of folder `sub`
    "entries-a-dict": field("entries", {}),
    "entries-null": field("entries", None),
    "version-true": field("version", True),
    "version-1e999": field("version", INF),
}
SNAPSHOT_CASES: dict[str, Change] = {
    "time-without-zone": field("time", "2026-01-01T00:00:00"),
    "time-a-number": field("time", 1764000000),
    "time-out-of-range": field("time", "0001-01-01T00:00:00+01:00"),
    "tree-not-hex": field("tree", "../../config"),
    "tree-a-number": field("tree", 5),
    "sources-a-string": field("sources", "/home"),
    "sources-numbers": field("sources", [5]),
    "host-a-number": field("host", 5),
    "parent-a-number": field("parent", 5),
    "summary-a-list": field("summary", []),
    "summary-files-string": summary(files="many"),
    "summary-bytes-1e999": summary(bytes=INF),
    "summary-files-2**70": summary(files=BIG),
    "summary-duration-1e999": summary(duration_seconds=INF),
    "summary-warnings-bool": summary(warnings=True),
    "version-true": field("version", True),
}


def index_with(pack: dict[str, Any] | None = None, **document: Any) -> dict[str, Any]:
    row = [HEX, "data", "raw", 0, 1]
    base = {"id": "cd" * 32, "size": 100, "blobs": [row]}
    return {"version": 1, "packs": [{**base, **(pack or {})}], **document}


INDEX_CASES: dict[str, object] = {
    "pack-size-1e999": index_with({"size": INF}),
    "pack-size-2**70": index_with({"size": BIG}),
    "pack-size-string": index_with({"size": "100"}),
    "pack-id-path": index_with({"id": "../../config"}),
    "pack-id-number": index_with({"id": 5}),
    "pack-a-list": index_with(packs=[[1]]),
    "packs-a-dict": index_with(packs={}),
    "row-offset-2**70": index_with({"blobs": [[HEX, "data", "raw", BIG, 1]]}),
    "row-length-1e999": index_with({"blobs": [[HEX, "data", "raw", 0, INF]]}),
    "row-offset-bool": index_with({"blobs": [[HEX, "data", "raw", True, 1]]}),
    "row-id-not-hex": index_with({"blobs": [["xyz", "data", "raw", 0, 1]]}),
    "row-id-number": index_with({"blobs": [[5, "data", "raw", 0, 1]]}),
    "row-a-dict": index_with({"blobs": [{"id": HEX}]}),
    "row-too-short": index_with({"blobs": [[HEX, "data", "raw", 0]]}),
    "blobs-a-string": index_with({"blobs": "none"}),
    "version-2": index_with(version=2),
    "document-a-list": [],
}
HEADER_CASES: dict[str, list[object]] = {  # one row of a pack header
    "offset-2**70": [HEX, "data", "raw", BIG, 1],
    "length-1e999": [HEX, "data", "raw", 0, INF],
    "length-string": [HEX, "data", "raw", 0, "1"],
    "id-not-hex": ["not an id", "data", "raw", 0, 1],
    "id-number": [7, "data", "raw", 0, 1],
}
CONFIG_CASES: dict[str, Change] = {
    "pack-size-1e999": field("pack_size", INF),
    "pack-size-string": field("pack_size", "16M"),
    "pack-size-2**70": field("pack_size", BIG),
    "chunker-a-list": field("chunker", []),
    "chunker-size-string": chunker(min_size="x"),
    "chunker-min-size-1": chunker(min_size=1),
    "chunker-avg-size-2**40": chunker(avg_size=2**40),
    "chunker-seed-negative": chunker(seed=-1),
    "chunker-normalization-9": chunker(normalization=9),
    "document-a-list": lambda document: [],
}
HERE = socket.gethostname()
LOCK = {"host": "elsewhere", "pid": 12, "time": 1764000000.0, "exclusive": True}
LOCK_CASES: dict[str, object] = {
    "time-1e999": {**LOCK, "time": INF},
    "time-1e300": {**LOCK, "time": 1e300},
    "time-string": {**LOCK, "time": "now"},
    "pid-2**70-here": {**LOCK, "host": HERE, "pid": BIG, "time": 4e9},
    "pid-string": {**LOCK, "pid": "12"},
    "exclusive-string": {**LOCK, "exclusive": "no"},
    "host-a-number": {**LOCK, "host": 5},
    "document-a-list": [LOCK],
}

# Commands that list every snapshot, and so meet an unreadable one however it is named.
LISTING = [["snapshots"], ["snapshots", "--json"], ["forget"], ["backup"]]


def in_a_listing(argv: list[str], snapshot_id: str) -> Expected:
    """What a listing command does with an unreadable snapshot it was not asked for: it goes on,
    with one warning naming it (issue 12, item 11); `forget` then prunes nothing and exits 3."""
    return Expected(3 if argv == ["forget"] else 0, "WARNING", f"snapshot {snapshot_id}")


@dataclass(frozen=True)
class Expected:
    status: int
    marker: str  # the one line that says what is wrong starts with this (or is a log line of this level) ...
    names: str  # ... and names this object


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, Any]:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    env = {"BACKUP_SOURCES": str(src), "BACKUP_TARGET": f"file://{tmp_path}/repo",
           "BACKUP_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path / "home"), "BACKUP_HOST": "test-host"}
    assert cli.main(["backup"], env) == 0
    crafter = Crafter(tmp_path / "repo")
    [first] = crafter.repository.snapshot_ids()
    yield {"env": env, "src": src, "tmp": tmp_path, "crafter": crafter, "first": first}
    crafter.close()


def run(capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str]) -> tuple[int | str, str]:
    """(exit status, everything printed); an exception out of `main` is the failure itself."""
    capsys.readouterr()
    try:
        code: int | str = int(cli.main(argv, env))
    except BaseException as error:  # a traceback is exactly what is tested for
        code = f"traceback: {type(error).__name__}: {error}"
    out, err = capsys.readouterr()
    return code, out + err


def verdict(argv: list[str], code: int | str, output: str, expected: Expected) -> str | None:
    """None when the command behaved, else one line saying how it did not."""
    lines = [line for line in output.splitlines()
             if line.startswith(("error:", "failed:", "damaged:")) or " WARNING " in line]
    said = [line for line in lines if line.startswith(expected.marker) or f" {expected.marker} " in line]
    if isinstance(code, str) or "Traceback" in output:
        problem = code if isinstance(code, str) else "a traceback was printed"
    elif code != expected.status:
        problem = f"exit {code}, expected {expected.status}: {lines[-3:]}"
    elif len(said) != 1 or expected.names not in said[0]:
        problem = f"expected one {expected.marker!r} line naming {expected.names!r}, got {said or lines}"
    else:
        return None
    return f"watcher {' '.join(argv)}: {problem}"


def check_all(capsys, env: dict[str, str], table: list[tuple[list[str], Expected]]) -> None:
    problems = [verdict(argv, *run(capsys, argv, env), expected) for argv, expected in table]
    problems = [problem for problem in problems if problem]
    assert not problems, "\n".join(problems)


def restored_rest(repo: dict[str, Any], where: Path) -> bool:
    """The entries the crafted value does not touch were restored."""
    return (where / str(repo["src"]).lstrip("/") / "run.sh").read_text() == "#!/bin/sh\necho hi\n"


def without_recorded_parent(repo: dict[str, Any]) -> None:
    """Drop this host's record of its last snapshot, so that a backup takes the newest one, the
    crafted one, as its parent (with the record, the crafted one would never be read)."""
    for record in (repo["tmp"] / "state" / "repos").glob("*/last-snapshot.json"):
        record.unlink()


def plant_tree(repo: dict[str, Any], change: Change, folder: list[str]) -> str:
    without_recorded_parent(repo)
    crafter: Crafter = repo["crafter"]
    document = crafter.snapshot_document(repo["first"])
    path = [part for part in str(repo["src"]).split("/") if part] + folder
    document["tree"] = crafter.tree_with(document["tree"], path, change)
    return crafter.add_snapshot(document, repo["first"])


def plant_snapshot(repo: dict[str, Any], change: Change) -> str:
    without_recorded_parent(repo)
    crafter: Crafter = repo["crafter"]
    document = crafter.snapshot_document(repo["first"])
    change(document)
    return crafter.add_snapshot(document, repo["first"])


def tree_table(repo: dict[str, Any], crafted: str, out: Path) -> list[tuple[list[str], Expected]]:
    fails = Expected(1, "error:", "tree ")
    return [
        (["ls", crafted], fails),
        (["diff", repo["first"], crafted], fails),
        (["restore", crafted, "--to", str(out)], Expected(1, "failed:", "tree ")),
        (["check"], Expected(1, "damaged:", "tree ")),
        (["forget"], fails),
        # The crafted snapshot is the parent: what it cannot say is read again from the disk.
        (["backup"], Expected(0, "WARNING", "tree ")),
    ]


@pytest.mark.parametrize("label", sorted(ENTRY_CASES))
def test_crafted_tree_entry(repo, capsys, label):
    crafted = plant_tree(repo, ENTRY_CASES[label], [])
    out = repo["tmp"] / "out"
    check_all(capsys, repo["env"], tree_table(repo, crafted, out))
    assert restored_rest(repo, out), "the rest of the restore goes on"


@pytest.mark.parametrize("label", sorted(TREE_CASES))
def test_crafted_tree(repo, capsys, label):
    crafted = plant_tree(repo, TREE_CASES[label], ["sub"])
    out = repo["tmp"] / "out"
    check_all(capsys, repo["env"], tree_table(repo, crafted, out))
    assert restored_rest(repo, out), "the rest of the restore goes on"


@pytest.mark.parametrize("label", sorted(SNAPSHOT_CASES))
def test_crafted_snapshot(repo, capsys, label):
    crafted = plant_snapshot(repo, SNAPSHOT_CASES[label])
    named = Expected(1, "error:", f"snapshot {crafted}")
    table = [(argv, in_a_listing(argv, crafted)) for argv in LISTING] + [
        (["ls", crafted], named),
        (["diff", repo["first"], crafted], named),
        (["restore", crafted, "--to", str(repo["tmp"] / "out")], named),
        (["check"], Expected(1, "damaged:", f"snapshot {crafted}")),
    ]
    check_all(capsys, repo["env"], table)


def whole_repository_table(repo: dict[str, Any], names: str, check: Expected) -> list[tuple[list[str], Expected]]:
    fails = Expected(1, "error:", names)
    return [(argv, fails) for argv in LISTING] + [
        (["ls", repo["first"]], fails),
        (["restore", repo["first"], "--to", str(repo["tmp"] / "out")], fails),
        (["check"], check),
    ]


@pytest.mark.parametrize("label", sorted(INDEX_CASES))
def test_crafted_index(repo, capsys, label):
    index_id = repo["crafter"].add_index(INDEX_CASES[label])
    names = f"index {index_id[:12]}"  # every command reads every index first, `check` too
    check_all(capsys, repo["env"], whole_repository_table(repo, names, Expected(1, "error:", names)))


@pytest.mark.parametrize("label", sorted(CONFIG_CASES))
def test_crafted_config(repo, capsys, label):
    repo["crafter"].replace_config(CONFIG_CASES[label])
    names = "repository config"
    check_all(capsys, repo["env"], whole_repository_table(repo, names, Expected(1, "error:", names)))


@pytest.mark.parametrize("label", sorted(HEADER_CASES))
def test_crafted_pack_header(repo, capsys, label):
    pack_id = repo["crafter"].add_pack({"version": 1, "blobs": [HEADER_CASES[label]]}, b"x")
    check_all(capsys, repo["env"], [(["check", "--read-data"], Expected(1, "damaged:", f"pack {pack_id[:12]}"))])


@pytest.mark.parametrize("label", sorted(LOCK_CASES))
def test_crafted_lock_is_ignored_with_a_warning(repo, capsys, label):
    repo["crafter"].add_lock(LOCK_CASES[label])
    ignored = Expected(0, "WARNING", "unreadable lock")
    check_all(capsys, repo["env"], [(["check"], ignored), (["forget"], ignored), (["backup"], ignored)])


# -- the real command ---------------------------------------------------------------------------


def watcher(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", *argv], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("kind", "label"), [("entry", "mode-2**40"), ("entry", "target-nul"),
                                             ("entry", "mtime-2**200"), ("snapshot", "time-without-zone")])
def test_the_real_command_prints_no_traceback(repo, kind, label):
    if kind == "entry":
        crafted = plant_tree(repo, ENTRY_CASES[label], [])
    else:
        crafted = plant_snapshot(repo, SNAPSHOT_CASES[label])
    for argv in (["ls", crafted], ["restore", crafted, "--to", str(repo["tmp"] / "out")], ["check"]):
        done = watcher(repo["env"], *argv)
        assert done.returncode == 1, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout, (argv, done.stderr)
        assert [line for line in (done.stdout + done.stderr).splitlines()
                if line.startswith(("error:", "failed:", "damaged:"))], (argv, done.stdout, done.stderr)


def test_crafting_helpers_make_sound_objects_when_nothing_is_changed(repo, capsys):
    """The crafting itself is sound: an unchanged copy passes every command."""
    crafted = plant_tree(repo, lambda document: None, [])
    repo["crafter"].add_index({"version": 1, "packs": []})
    code, output = run(capsys, ["check", "--read-data"], repo["env"])
    assert code == 0, output
    code, output = run(capsys, ["restore", crafted, "--to", str(repo["tmp"] / "out")], repo["env"])
    assert code == 0 and restored_rest(repo, repo["tmp"] / "out"), output


def test_damaged_local_cache_rows_are_read_again_from_the_target(repo, capsys):
    """SQLite keeps any type in any column: a cached copy of the wrong type is not a copy."""
    [path] = (repo["tmp"] / "state").glob("repos/*/cache.db")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE blobs SET data = 'not bytes'")
        db.execute("UPDATE snapshots SET data = 'not bytes'")
        db.execute("UPDATE files SET chunks = 5")
    db.close()
    for argv in (["ls", repo["first"]], ["snapshots"], ["backup"]):
        code, output = run(capsys, argv, repo["env"])
        assert code == 0, (argv, output)


def test_a_bad_entry_outside_the_paths_asked_for_does_not_fail_the_restore(repo, capsys):
    crafted = plant_tree(repo, ENTRY_CASES["mode-2**40"], [])
    out = repo["tmp"] / "out"
    code, output = run(capsys, ["restore", crafted, "--to", str(out), f"{repo['src']}/run.sh"], repo["env"])
    assert code == 0 and restored_rest(repo, out), output
    code, output = run(capsys, ["restore", crafted, "--to", str(out), f"{repo['src']}/a.txt"], repo["env"])
    assert code == 1 and [line for line in output.splitlines() if line.startswith("failed:")], output


def test_a_file_time_an_earlier_watcher_stored_beyond_year_9999_costs_nothing(repo, capsys):
    """Earlier watchers stored any time a file system gave (tmpfs, btrfs): it is read as the last
    time a tree holds, and the file restores whole."""
    crafted = plant_tree(repo, entry("a.txt", mtime_ns=BIG), [])
    out = repo["tmp"] / "out"
    code, output = run(capsys, ["restore", crafted, "--to", str(out)], repo["env"])
    assert code == 0, output
    restored = out / str(repo["src"]).lstrip("/") / "a.txt"
    assert restored.read_bytes() == (repo["src"] / "a.txt").read_bytes()
    code, output = run(capsys, ["ls", crafted], repo["env"])
    assert code == 0 and "9999-12-31" in output, output
    code, output = run(capsys, ["backup"], repo["env"])  # with it as the parent
    assert code == 0 and "WARNING" not in output, output
