"""Walking the sources: any depth, never through a symlink, never into the state folder."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import describe_tree, make_tree
from tests.integration.daemon_helpers import DaemonProcess, daemon_env
from watcher.cli import main

pytestmark = pytest.mark.timeout(300)

SECRET = b"root-only secret 7f3a9c"


def cli_env(source: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BACKUP_SOURCES": str(source), "BACKUP_TARGET": f"file://{tmp_path}/repo",
            "BACKUP_STATE_DIR": str(tmp_path / "state"), **extra}


def nested(root: Path, depth: int) -> Path:
    """`depth` folders one inside the other, a file at every 100th level and at the bottom."""
    folder = root
    for level in range(depth):
        folder = folder / "d"
        folder.mkdir(parents=True)
        if level % 100 == 0:
            (folder / "level.txt").write_text(f"level {level}")
    (folder / "bottom.txt").write_bytes(os.urandom(3000))
    return folder


def remove(root: Path) -> None:
    """Remove a tree too deep for shutil.rmtree (it recurses once per level) and for full paths."""
    here = os.getcwd()
    names: list[str] = []
    try:
        os.chdir(root)
        while True:
            folders = [entry.name for entry in os.scandir(".") if entry.is_dir(follow_symlinks=False)]
            if folders:
                os.chdir(folders[0])
                names.append(folders[0])
                continue
            for entry in os.scandir("."):
                os.unlink(entry.name)
            if not names:
                break
            os.chdir("..")
            os.rmdir(names.pop())
    finally:
        os.chdir(here)
    os.rmdir(root)


@pytest.fixture
def deep(tmp_path: Path):
    yield tmp_path / "src"
    remove(tmp_path / "src")
    if (tmp_path / "out").exists():
        remove(tmp_path / "out")


def repository_bytes(repo: Path) -> bytes:
    return b"".join(path.read_bytes() for path in repo.rglob("*") if path.is_file())


def test_600_nested_folders_back_up_and_restore_byte_for_byte(tmp_path, deep, capsys):
    source = deep
    nested(source, 600)
    env = cli_env(source, tmp_path)
    assert main(["backup"], env) == 0, capsys.readouterr().err
    assert main(["restore", "latest", "--to", str(tmp_path / "out")], env) == 0, capsys.readouterr().err
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)


def _small_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


def test_2000_nested_folders_back_up_and_restore_with_128_descriptors(tmp_path, deep):
    """The walk and the restore hold a bounded number of folders open: a default ulimit (1024)
    never runs out."""
    source = deep
    bottom = nested(source, 2000)
    env = {**os.environ, **cli_env(source, tmp_path)}
    done = subprocess.run([sys.executable, "-m", "watcher", "backup"], env=env, capture_output=True, text=True,
                          timeout=240, preexec_fn=_small_fd_limit)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2001 files" not in done.stdout and "21 files (21 new" in done.stdout, done.stdout
    assert bottom.joinpath("bottom.txt").read_bytes() in repository_bytes(tmp_path / "repo")
    done = subprocess.run([sys.executable, "-m", "watcher", "restore", "latest", "--to", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=240, preexec_fn=_small_fd_limit)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert "21 files" in done.stdout, done.stdout
    restored = read_by_components(tmp_path / "out", f"{bottom}/bottom.txt")  # longer than PATH_MAX
    assert restored == read_by_components(Path("/"), f"{bottom}/bottom.txt")


def read_by_components(root: Path, path: str) -> bytes:
    """A file's bytes, its folders opened one at a time (its whole path may exceed PATH_MAX)."""
    *folders, name = path.strip("/").split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        with os.fdopen(file_fd, "rb") as handle:
            return handle.read()
    finally:
        os.close(fd)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    folder = make_tree(tmp_path / "root-only", {"secret.txt": SECRET})
    folder.chmod(0o700)
    return folder


def swap_for_link(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + "-moved"))
    folder.symlink_to(target)


def test_a_folder_swapped_for_a_symlink_after_lstat_is_not_followed(tmp_path, secret, capsys, monkeypatch):
    source = make_tree(tmp_path / "src", {"ok.txt": "fine", "victim/inside.txt": "mine"})
    victim = source / "victim"
    real_lstat = os.lstat

    def lstat_then_swap(path, *args, **kwargs):
        result = real_lstat(path, *args, **kwargs)
        if os.fsdecode(path) in (str(victim), "victim") and not victim.is_symlink():
            swap_for_link(victim, secret)  # the exact instant between the lstat and the listing
        return result

    monkeypatch.setattr(os, "lstat", lstat_then_swap)
    env = cli_env(source, tmp_path)
    code = main(["backup"], env)
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 3, err
    assert "victim" in err and "symlink" in err
    assert SECRET not in repository_bytes(tmp_path / "repo")
    main(["ls", "latest", "--json"], env)
    paths = {entry["path"] for entry in json.loads(capsys.readouterr().out)}
    assert f"{source}/ok.txt" in paths and not any("secret" in path for path in paths)


def test_folders_flipping_to_symlinks_during_backups_never_leak(tmp_path, secret, capsys):
    """A real race: another process flips folders and symlinks to the secret while backups run.

    Not deterministic, but before the fix the secret leaked within 4 to 25 runs of 300 folders.
    """
    source = make_tree(tmp_path / "src", {f"f{i}/x.txt": f"{i}" for i in range(300)})
    flipper = subprocess.Popen([sys.executable, "-c", FLIPPER, str(source), str(secret)])
    env = cli_env(source, tmp_path)
    try:
        for _ in range(60):
            assert main(["backup"], env) in (0, 3)
            assert SECRET not in repository_bytes(tmp_path / "repo")
    finally:
        flipper.kill()
        flipper.wait()
        capsys.readouterr()


FLIPPER = """
import os, sys
source, secret = sys.argv[1], sys.argv[2]
names = [os.path.join(source, f"f{i}") for i in range(300)]
while True:  # each name is a folder half of the time, a symlink to the secret the other half
    for name in names:
        os.rename(name, name + ".real")
        os.symlink(secret, name)
    for name in names:
        os.unlink(name)
        os.rename(name + ".real", name)
"""


def test_a_source_that_is_a_symlink_is_followed_as_configured_and_said(tmp_path, capsys):
    real = make_tree(tmp_path / "real", {"a.txt": "alpha"})
    source = tmp_path / "link"
    source.symlink_to(real)
    env = cli_env(source, tmp_path)
    assert main(["backup"], env) == 0
    captured = capsys.readouterr()
    assert f"{source} is reached through a symlink" in captured.err and str(real) in captured.err
    main(["ls", "latest", "--json"], env)
    assert f"{source}/a.txt" in {entry["path"] for entry in json.loads(capsys.readouterr().out)}


def test_a_source_that_becomes_a_symlink_later_is_not_followed(tmp_path, secret, capsys):
    source = make_tree(tmp_path / "src", {"a.txt": "alpha"})
    env = cli_env(source, tmp_path)
    assert main(["backup"], env) == 0
    swap_for_link(source, secret)
    code = main(["backup"], env)
    err = capsys.readouterr().err
    assert code == 3, err
    assert "symlink" in err and "not followed" in err
    assert SECRET not in repository_bytes(tmp_path / "repo")


@pytest.mark.parametrize("through_link", [False, True])
def test_a_state_folder_inside_a_source_never_triggers_runs(tmp_path, through_link):
    source = make_tree(tmp_path / "src", {"a.txt": "alpha"})
    if through_link:
        (tmp_path / "link").symlink_to(source)
        state = tmp_path / "link" / "state"
    else:
        state = source / "state"
    env = daemon_env(source, tmp_path, BACKUP_STATE_DIR=str(state), BACKUP_TARGET=f"file://{source}/repo")
    process = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        process.wait_for_output("saved")
        time.sleep(6)  # a debounce period (0.5 s) and a max delay (5 s) later
        assert process.output().count("run started") == 1, process.output()
        assert len(list((source / "repo" / "snapshots").iterdir())) == 1
        (source / "b.txt").write_text("beta")  # real changes still trigger a run
        process.wait_for_output("saved", count=2, timeout=20)
    finally:
        assert process.stop() == 0
