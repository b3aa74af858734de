"""A hostile or damaged repository (the server is not trusted): every command ends in one clear line.

Issue 12, items 8 and 9: the config's `id` names a folder of the state folder; trees that name
one subtree many times must not expand without bound; declared lengths and objects that never
end must not be read without bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.unit import test_cli
from watcher import repository as repository_module
from watcher.backends.local import LocalBackend
from watcher.repository import Repository, iter_tree
from watcher.snapshot import Node, Snapshot, Summary, digest, encode_tree, new_snapshot_id

paths, run = test_cli.paths, test_cli.run  # the CLI tests' fixtures: a source tree backed up by `run`


def one_error(err: str) -> str:
    """The one `error:` line (a backup also logs the failure to the console before it)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.endswith(lines[0] + "\n"), err
    return lines[0]


# -- item 8: the config's id -------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["../../escaped", "<absolute>", "..", "a/b", "", "0" * 31, "0" * 33,
                                    "ABCDEF0123456789ABCDEF0123456789", "0123456789abcdef0123456789abcdeg",
                                    "x\n" * 20, 12345678901234567890123456789012, None, ["a"]])
@pytest.mark.parametrize("command", [["snapshots"], ["backup"], ["check"]])
def test_a_config_id_that_is_not_32_hex_digits_is_refused(run, paths, tmp_path, bad_id, command):
    run.ok("backup")
    config = Path(paths["repo"]) / "config"
    document = json.loads(config.read_bytes())
    document["id"] = str(tmp_path / "absolute") if bad_id == "<absolute>" else bad_id
    config.write_text(json.dumps(document))
    logs = tmp_path / "state" / "logs"  # a backup's run log is the one thing it may write
    before = sorted(str(path) for path in tmp_path.rglob("*") if logs not in path.parents)
    code, out, err = run(*command)
    assert code == 1, (out, err)
    assert "repository config" in one_error(err) and "id" in err
    after = sorted(str(path) for path in tmp_path.rglob("*") if logs not in path.parents)
    assert after == before, "nothing may be created anywhere"


# -- item 9: reads bounded by what the index and the limits allow ----------------------------


def bounded(run, *argv: str, env: dict[str, str] | None = None, seconds: float = 60,
            memory: int = 1 << 30, setup: str = "") -> tuple[int, str, str]:
    """The CLI in a child process with `memory` bytes of address space and `seconds` to finish:
    a read without bound fails or times out there instead of taking the test machine down.
    `setup`: Python run first in the child (to lower a limit so that a small test shows it)."""
    script = "; ".join(filter(None, ["import resource, sys",
                                     f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))", setup,
                                     "from watcher import cli", "sys.exit(cli.main(sys.argv[1:]))"]))
    try:
        done = subprocess.run([sys.executable, "-c", script, *argv], env={**os.environ, **(env or run.env)},
                              capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"watcher {' '.join(argv)} did not end within {seconds} s")
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def index_file(repo: Path) -> Path:
    [path] = (repo / "index").iterdir()
    return path


def rewrite_index(repo: Path, change: Callable[[dict], None]) -> None:
    """Change the (only) index document, stored under its new hash as a writer would."""
    old = index_file(repo)
    document = json.loads(old.read_bytes())
    change(document)
    data = json.dumps(document).encode()
    (repo / "index" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    old.unlink()


def fresh_state(run, tmp_path: Path) -> dict[str, str]:
    """A machine that has never seen the repository: every object comes from the target."""
    return {**run.env, "BACKUP_STATE_DIR": str(tmp_path / "fresh-state")}


def subtree_of(repo: Path, tree: str, path: str) -> str:
    repository = Repository(LocalBackend(repo), None)
    repository.open()
    repository.load_index()
    [node] = [node for where, node in iter_tree(repository, tree) if where == path]
    repository.close()
    return node.subtree


@pytest.mark.parametrize("blob", ["root tree", "a folder's tree", "file content"])
def test_a_declared_length_beyond_the_pack_is_refused(run, paths, tmp_path, blob):
    run.ok("backup")
    repo = Path(paths["repo"])
    hello = hashlib.sha256(Path(paths["src"], "a.txt").read_bytes()).hexdigest()
    root = json.loads(run.ok("snapshots", "--json"))[0]["tree"]
    sub = subtree_of(repo, root, f"{paths['src']}/sub")
    wanted = {"root tree": root, "file content": hello, "a folder's tree": sub}[blob]

    def declare_a_huge_length(document: dict) -> None:
        rows = [row for pack in document["packs"] for row in pack["blobs"] if row[0] == wanted]
        assert rows
        for row in rows:
            row[4] = 10**15

    rewrite_index(repo, declare_a_huge_length)
    env = fresh_state(run, tmp_path)
    code, out, _err = bounded(run, "check", env=env)
    assert code == 1 and f"blob {wanted[:12]}" in out and "beyond the end of pack" in out, out
    code, out, err = bounded(run, "restore", "latest", "--to", str(tmp_path / "restored"), env=env)
    assert code == 1
    if blob == "root tree":
        assert "beyond the end of pack" in one_error(err)
    else:  # the other files are restored
        failed = "sub" if blob == "a folder's tree" else "a.txt"
        assert f"failed: {paths['src']}/{failed}: blob {wanted[:12]}" in out, out
        restored = tmp_path / "restored" / Path(paths["src"]).relative_to("/")
        assert (restored / "run.sh").read_bytes() == Path(paths["src"], "run.sh").read_bytes()


KEYS = {"pack": "packs", "index": "index", "snapshot": "snapshots"}


@pytest.mark.parametrize("how", ["link to /dev/zero", "sparse 1 TB file"])
@pytest.mark.parametrize("what", sorted(KEYS))
def test_an_object_that_never_ends_is_not_read_forever(run, paths, tmp_path, what, how):
    run.ok("backup")
    [path] = [p for p in (Path(paths["repo"]) / KEYS[what]).rglob("*") if p.is_file()]
    path.unlink()
    if how == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    else:
        with path.open("wb") as sparse:
            sparse.truncate(10**12)
    env = fresh_state(run, tmp_path)
    for argv in (["snapshots"], ["check", "--read-data"], ["restore", "latest", "--to", str(tmp_path / "to")]):
        code, out, err = bounded(run, *argv, env=env)
        if argv[0] != "snapshots" and not (what == "snapshot" and argv[0] == "check" and how.startswith("link")):
            assert code == 1, (argv, out, err)  # damaged (a linked snapshot is simply not there)
        if code and argv[0] != "restore":
            assert out.startswith("damaged: ") or one_error(err), (argv, out, err)


# -- item 9: trees that name one subtree many times ------------------------------------------


def save_crafted_snapshot(repo: Path, top: str, writer_trees: list[bytes], summary: Summary) -> str:
    """Store `writer_trees` (tree documents) as a writer would, and a snapshot of tree `top`."""
    repository = Repository(LocalBackend(repo), None)
    repository.open()
    repository.load_index()
    writer = repository.writer()
    for data in writer_trees:
        writer.add(digest(data), "tree", data)
    writer.finish()
    moment = datetime.now(UTC)
    snapshot = Snapshot(new_snapshot_id(moment), moment, "test-host", ("/crafted",), top, None, summary)
    repository.save_snapshot(snapshot)
    repository.close()
    return snapshot.id


def folder(name: str, subtree: str) -> Node:
    return Node(name, "dir", 0o755, 1_600_000_000_000_000_000, subtree=subtree)


def doubling_trees(levels: int) -> tuple[str, list[bytes]]:
    """`levels` trees of about 300 bytes, each naming the one below twice: 2^(levels+1) - 2 entries."""
    trees = [encode_tree([])]
    for _ in range(levels):
        below = digest(trees[-1])
        trees.append(encode_tree([folder("a", below), folder("b", below)]))
    return digest(trees[-1]), trees


SUMMARIES = {"no counts": Summary(), "a plausible summary": Summary(files=7, dirs=5),
             "a summary that claims 2**50 files": Summary(files=2**50, dirs=2**50)}


@pytest.fixture(params=sorted(SUMMARIES))
def bomb(request, run, paths) -> tuple[str, str]:
    """(the good snapshot's id, the id of one whose 48 KB of trees expand to 2^41 entries)."""
    run.ok("backup")
    [good] = run.snapshot_ids()
    top, trees = doubling_trees(40)
    return good, save_crafted_snapshot(Path(paths["repo"]), top, trees, SUMMARIES[request.param])


@pytest.mark.parametrize("argv", [["ls", "{bomb}"], ["ls", "--json", "{bomb}", "/a/b/a"], ["diff", "{good}", "{bomb}"],
                                  ["diff", "{bomb}", "{good}"], ["restore", "{bomb}", "--to", "{to}"]],
                         ids=["ls", "ls-path", "diff-added", "diff-removed", "restore"])
def test_a_tree_that_expands_without_bound_is_refused_before_walking_it(run, tmp_path, bomb, argv):
    good, bad = bomb
    argv = [part.format(good=good, bomb=bad, to=tmp_path / "to") for part in argv]
    code, out, err = bounded(run, *argv, seconds=30, memory=768 << 20)
    assert code == 1 and out == "", (out[:500], err)
    assert f"snapshot {bad}" in one_error(err) and "entries" in err
    assert not (tmp_path / "to").exists() or not any((tmp_path / "to").iterdir())


def test_check_calls_a_tree_that_expands_without_bound_damaged(run, bomb):
    good, bad = bomb
    code, out, _err = bounded(run, "check", seconds=30, memory=768 << 20)
    assert code == 1
    damaged = [line for line in out.splitlines() if line.startswith("damaged: ")]
    assert len(damaged) == 1 and f"snapshot {bad}" in damaged[0], out
    assert good not in out


def test_many_identical_folders_are_walked_as_they_are(run, paths, tmp_path, monkeypatch):
    """Legitimate snapshots name one subtree many times (copies of a folder, empty folders): the
    bound comes from the snapshot's own counts, so they pass even without the margin."""
    monkeypatch.setattr(repository_module, "ENTRIES_MARGIN", 8)
    src = Path(paths["src"])
    for number in range(60):
        (src / "copies" / f"c{number}" / "inner").mkdir(parents=True)
        (src / "copies" / f"c{number}" / "same.txt").write_text("same\n")
        (src / "copies" / f"c{number}" / "inner" / "also.txt").write_text("also\n")
        (src / "empties" / f"e{number}").mkdir(parents=True)
    run.ok("backup")
    [first] = run.snapshot_ids()
    listed = run.ok("ls", "latest").splitlines()
    assert sum(f"{paths['src']}/copies/c" in line and line.endswith("/inner/also.txt") for line in listed) == 60
    assert "sound" in run.ok("check")
    (src / "copies" / "c7" / "same.txt").write_text("changed\n")
    run.ok("backup")
    assert run.ok("diff", first, "latest").splitlines() == [f"M {paths['src']}/copies/c7/same.txt",
                                                           "0 added, 0 removed, 1 changed"]
    run.ok("restore", "latest", "--to", str(tmp_path / "to"))
    restored = tmp_path / "to" / src.relative_to("/")
    assert test_cli.describe_tree(restored) == test_cli.describe_tree(src)


DEPTH = 1500  # deeper than Python's recursion limit


def test_a_deep_tree_is_walked_by_every_command(run, paths, tmp_path):
    run.ok("backup")
    [good] = run.snapshot_ids()
    content = b"at the bottom\n"
    trees = [encode_tree([Node("deep.txt", "file", 0o644, 1_600_000_000_000_000_000, size=len(content),
                               content=(digest(content),))])]
    for _ in range(DEPTH):
        trees.append(encode_tree([folder("d", digest(trees[-1]))]))
    repo = Path(paths["repo"])
    repository = Repository(LocalBackend(repo), None)
    repository.open()
    repository.load_index()
    writer = repository.writer()
    writer.add(digest(content), "data", content)
    writer.finish()
    repository.close()
    deep = save_crafted_snapshot(repo, digest(trees[-1]), trees, Summary(files=1, dirs=DEPTH))
    listed = run.ok("ls", deep).splitlines()
    assert len(listed) == DEPTH + 1 and listed[-1].endswith("/d" * DEPTH + "/deep.txt")
    assert run.ok("diff", good, deep).splitlines()[-1].startswith(f"{DEPTH + 1} added, ")
    assert f" added, {DEPTH + 1} removed, " in run.ok("diff", deep, good)
    assert "sound" in run.ok("check")
    try:
        run.ok("restore", deep, "--to", str(tmp_path / "to"))
        assert (tmp_path / "to" / ("d/" * DEPTH) / "deep.txt").read_bytes() == content
    finally:  # shutil.rmtree (pytest's clean-up of old runs) recurses: take the chain apart here
        bottom = tmp_path / "to"
        while (bottom / "d").is_dir():
            bottom /= "d"
        (bottom / "deep.txt").unlink(missing_ok=True)
        while bottom != tmp_path:
            bottom.rmdir()
            bottom = bottom.parent
    run.ok("forget")
    assert "sound" in run.ok("check")


def test_a_backup_whose_parent_names_a_removed_subtree_many_times_ends(run, paths, tmp_path):
    """The parent (this host's own, as the server returns it) gains a folder, gone from the source,
    whose trees expand to 2^41 entries: counting what was removed reads each distinct tree once."""
    run.ok("backup")
    [good] = run.snapshot_ids()
    repository = Repository(LocalBackend(paths["repo"]), tmp_path / "state")
    repository.open()
    repository.load_index()
    parent = repository.load_snapshot(good)
    trees = [encode_tree([Node("link", "symlink", 0o777, 1_600_000_000_000_000_000, target="x")])]
    for _ in range(40):  # 2^40 links at the bottom
        trees.append(encode_tree([folder("a", digest(trees[-1])), folder("b", digest(trees[-1]))]))
    top = digest(trees[-1])

    def with_gone_folder(tree: str, parts: list[str]) -> str:
        """`tree` rebuilt with the crafted folder in the source, down the path `parts`."""
        nodes = repository.load_tree(tree)
        if parts:
            nodes = [replace(node, subtree=with_gone_folder(node.subtree, parts[1:])) if node.name == parts[0]
                     else node for node in nodes]
        else:
            nodes.append(folder("zz-gone", top))
        trees.append(encode_tree(nodes))
        return digest(trees[-1])

    root = with_gone_folder(parent.tree, paths["src"].strip("/").split("/"))
    writer = repository.writer()
    for data in trees:
        writer.add(digest(data), "tree", data)
    writer.finish()
    moment = datetime.now(UTC)
    crafted = Snapshot(new_snapshot_id(moment), moment, parent.host, parent.sources, root, good,
                       parent.summary)
    repository.record_snapshot(parent.host, parent.sources, crafted.id)
    repository.save_snapshot(crafted)
    repository.close()
    code, out, err = bounded(run, "backup", seconds=30, memory=768 << 20)
    assert code == 0, (out[-500:], err[-2000:])
    assert f"{2**40} removed" in out


def test_a_blob_that_inflates_without_bound_is_refused(run, paths):
    """A megabyte of zlib that inflates to 1 GiB (a hostile server), in a process allowed 768 MiB
    and a tree limit lowered to 64 MiB (the real one is 1 GiB): one line, never unbounded memory."""
    run.ok("backup")
    deflater = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    bomb = b"".join(deflater.compress(zeros) for _ in range(1024)) + deflater.flush()
    repository = Repository(LocalBackend(paths["repo"]), None)
    repository.open()
    repository.load_index()
    writer = repository.writer()
    writer.add_stored("ab" * 32, "tree", "zlib", bomb)
    writer.finish()
    moment = datetime.now(UTC)
    crafted = Snapshot(new_snapshot_id(moment), moment, "test-host", ("/crafted",), "ab" * 32, None, Summary())
    repository.save_snapshot(crafted)
    repository.close()
    for argv in (["ls", crafted.id], ["check"]):
        code, out, err = bounded(run, *argv, seconds=60, memory=768 << 20,
                                 setup="from watcher import pack; pack.INFLATED_LIMIT['tree'] = 64 << 20")
        assert code == 1, (argv, out[-500:], err[-500:])
        assert "inflates to more than the 67108864 bytes a tree blob may hold" in out + err, (out, err)
