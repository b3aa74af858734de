"""A one-shot command against a server that accepts and closes every connection (a crashed daemon
behind a live port, a proxy with nothing behind it): each request is tried BACKUP_RETRIES times,
then one clear line and exit 1, and no library's traceback reaches the console."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from watcher import retry
from watcher.cli import main

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def closing_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener closes each connection as soon as it is accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # a blocked accept would not see the listener closed
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.close()

    thread = threading.Thread(target=serve, name="closing-listener", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopped.set()
        listener.close()
        thread.join(timeout=10)


@pytest.mark.parametrize("scheme", ["sftp", "ftp"])
@pytest.mark.parametrize("retries", [1, 2])
def test_a_one_shot_command_tries_as_often_as_backup_retries_says(closing_port, tmp_path, capsys, monkeypatch,
                                                                  scheme, retries):
    monkeypatch.setattr(retry, "DEFAULT_POLICY", retry.RetryPolicy(attempts=5, initial_seconds=0.01,
                                                                     max_seconds=0.02))
    env = {"BACKUP_TARGET": f"{scheme}://someone@127.0.0.1:{closing_port}/srv/backups",
           "BACKUP_TARGET_PASSWORD": "a-Target-Secret-77", "BACKUP_STATE_DIR": str(tmp_path / "state"),
           "BACKUP_SSH_KNOWN_HOSTS": str(tmp_path / "known_hosts"), "BACKUP_RETRIES": str(retries)}
    code = main(["snapshots"], env)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 1, text
    assert "Traceback" not in text and "paramiko" not in text, text
    assert text.count(f" of {retries} in ") == retries - 1, text
    assert " of 5 in " not in text, text
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
