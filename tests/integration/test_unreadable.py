"""A file or folder that cannot be read is a warning: the run completes, says so, exits 3.

Root reads everything, so when the tests run as root this test takes the identity of `nobody`
(effective uid only, restored at the end) for the run: the kernel itself then refuses the reads.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.cli import main


@contextlib.contextmanager
def unprivileged(folder: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        yield
        return
    nobody = pwd.getpwnam("nobody")
    for path in [folder, *folder.rglob("*")]:
        if not path.name.startswith("locked"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="watcher-unreadable-"))  # outside root's private tmp folders
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_unreadable_file_and_folder_are_warnings_with_exit_3(folder, capsys, monkeypatch):
    monkeypatch.chdir(folder)  # a working folder the unprivileged user may read (for ./.env)
    source = folder / "src"
    (source / "locked-folder").mkdir(parents=True)
    (source / "locked-folder" / "inside.txt").write_text("x")
    (source / "ok.txt").write_text("readable")
    (source / "locked.txt").write_text("secret")
    (source / "locked.txt").chmod(0o000)
    (source / "locked-folder").chmod(0o000)
    env = {"BACKUP_SOURCES": str(source), "BACKUP_TARGET": f"file://{folder}/repo",
           "BACKUP_STATE_DIR": str(folder / "state")}
    with unprivileged(folder):
        code = main(["backup"], env)
        listing = capsys.readouterr()
        main(["ls", "latest"], env)
        entries = capsys.readouterr().out
    assert code == 3, listing.err
    assert "2 warnings: some files could not be read" in listing.out
    assert "cannot read" in listing.err and "locked.txt" in listing.err and "locked-folder" in listing.err
    assert f"{source}/ok.txt" in entries and f"{source}/locked.txt" not in entries
