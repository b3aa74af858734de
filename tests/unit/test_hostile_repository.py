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
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit import test_cli

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
            memory: int = 1 << 30) -> tuple[int, str, str]:
    """The CLI in a child process with `memory` bytes of address space and `seconds` to finish:
    a read without bound fails or times out there instead of taking the test machine down."""
    script = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory})); "
              "from watcher import cli; sys.exit(cli.main(sys.argv[1:]))")
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


@pytest.mark.parametrize("blob", ["root tree", "file content"])
def test_a_declared_length_beyond_the_pack_is_refused(run, paths, tmp_path, blob):
    run.ok("backup")
    repo = Path(paths["repo"])
    hello = hashlib.sha256(Path(paths["src"], "a.txt").read_bytes()).hexdigest()
    root = json.loads(run.ok("snapshots", "--json"))[0]["tree"]
    wanted = root if blob == "root tree" else hello

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
        assert f"failed: {paths['src']}/a.txt: blob {hello[:12]}" in out, out
        restored = tmp_path / "restored" / Path(paths["src"]).relative_to("/")
        assert (restored / "sub" / "b.bin").read_bytes() == Path(paths["src"], "sub", "b.bin").read_bytes()


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
