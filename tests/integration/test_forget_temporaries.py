"""`forget` removes the temporary files killed uploads left, once surely abandoned, on real servers.

An upload is killed for real (SIGKILL of a process in the middle of a `put`), on a file://, SFTP
and FTP target; its temporary file is then made old by setting its time on the server's disk.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.ftp import FtpServer
from tests.fixtures.sftp import SshServer
from tests.helpers import make_tree
from watcher.backends import create_backend
from watcher.backends.base import Backend, TemporaryInfo
from watcher.cli import main
from watcher.config import load_settings

pytestmark = pytest.mark.timeout(120)

# Uploads a pack whose source gives 64 KiB, says so, and never ends: killed there.
KILLED_UPLOAD = """
import io, os, time
from watcher.backends import create_backend
from watcher.config import load_settings

class Stalls(io.RawIOBase):
    given = False
    def readable(self):
        return True
    def readinto(self, buffer):
        if self.given:
            print("uploading", flush=True)
            time.sleep(600)
        self.given = True
        buffer[:65536] = os.urandom(65536)
        return 65536

backend = create_backend(load_settings(os.environ))
backend.put("packs/00/00killed", Stalls())
"""


@pytest.fixture(params=["file", "sftp", "ftp"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    source = make_tree(tmp_path / "src", {"a.txt": "alpha"})
    common = {"BACKUP_SOURCES": str(source), "BACKUP_STATE_DIR": str(tmp_path / "state"), "BACKUP_KEEP_LAST": "3"}
    if request.param == "file":
        return {**common, "BACKUP_TARGET": f"file://{tmp_path / 'repository'}"}
    if request.param == "sftp":
        server: SshServer = request.getfixturevalue("sshd_server")
        server.need_local()
        return {**common,
                "BACKUP_TARGET": f"sftp://{server.user}@{server.host}:{server.port}{server.scratch('temporaries')}",
                "BACKUP_TARGET_PASSWORD": server.password, "BACKUP_ENCRYPTION": "none",
                "BACKUP_SSH_KNOWN_HOSTS": str(server.known_hosts)}
    ftp: FtpServer = request.getfixturevalue("ftp_server")
    ftp.need_local()
    return {**common, **ftp.env(ftp.scratch("temporaries"))}


@pytest.fixture
def backend(env: dict[str, str]) -> Iterator[Backend]:
    subject = create_backend(load_settings(env))
    subject.open()
    yield subject
    subject.close()


def kill_an_upload(env: dict[str, str]) -> TemporaryInfo:
    """What a power cut or `kill -9` in the middle of an upload leaves behind."""
    before = set(temporaries(env))
    upload = subprocess.Popen([sys.executable, "-c", KILLED_UPLOAD], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **env, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert upload.stdout is not None and upload.stdout.readline() == "uploading\n"
    upload.kill()
    upload.wait()
    upload.stdout.close()
    (left,) = [info for info in temporaries(env).values() if info.name not in before]
    return left


def temporaries(env: dict[str, str]) -> dict[str, TemporaryInfo]:
    subject = create_backend(load_settings(env))
    try:
        return {info.name: info for info in subject.list_temporary()}
    finally:
        subject.close()


def test_forget_removes_only_old_left_over_temporary_files(env, backend, capsys):
    assert main(["backup"], env) == 0
    old, fresh = kill_an_upload(env), kill_an_upload(env)
    assert old.name.startswith("packs/00/.00killed.tmp-")
    two_days_ago = time.time() - 2 * 86400
    os.utime(Path(str(backend.root)) / old.name, (two_days_ago, two_days_ago))  # type: ignore[attr-defined]
    capsys.readouterr()
    assert main(["forget", "--dry-run"], env) == 0
    assert "would remove 1 left-over temporary upload files" in capsys.readouterr().out
    assert set(temporaries(env)) == {old.name, fresh.name}
    assert main(["forget"], env) == 0
    assert "removed 1 left-over temporary upload files" in capsys.readouterr().out
    assert set(temporaries(env)) == {fresh.name}  # a day old at least: a running upload is never touched
    assert main(["check"], env) == 0
