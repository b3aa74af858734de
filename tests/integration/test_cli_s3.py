"""Every command against a real SeaweedFS S3 gateway, as a user runs them; the daemon, a crash,
and the failures a user meets (a wrong secret, a refused key, an untrusted certificate, a server
that is down), each one line with the documented exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.processes import free_port
from tests.fixtures.s3 import S3Server, identity
from tests.fixtures.smtp import SmtpServer
from tests.helpers import describe_tree, make_tree
from tests.integration.daemon_helpers import DaemonProcess, daemon_env, snapshot_paths, wait_until
from tests.integration.test_cli_sftp import assert_recovers, exercise_commands, outage, run
from tests.integration.test_cli_sftp import source as source  # the same tree, a fixture
from tests.unit.test_encryption import MARKERS, PASSWORD, assert_nothing_readable, restored_files
from watcher import crypto
from watcher.repository import Repository

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "tuned_params", lambda seconds=crypto.KDF_SECONDS: crypto.KdfParams(1 << 10, 8, 1))


def s3_env(server: S3Server, source: Path, tmp_path: Path, name: str, *, tls: bool = False,
           **extra: str) -> dict[str, str]:
    """An encrypted repository in a new bucket of its own (created by the first backup)."""
    return {"BACKUP_SOURCES": str(source), "BACKUP_STATE_DIR": str(tmp_path / "state"),
            "BACKUP_REPOSITORY_PASSWORD": PASSWORD, **server.environment(server.bucket(name), tls=tls), **extra}


def test_every_command_over_s3(s3_server, source, tmp_path, capsys):
    env = s3_env(s3_server, source, tmp_path, "cli")
    code, out, _ = run(capsys, ["doctor"], env)
    assert code == 0 and "no repository yet (the first backup creates it, encrypted)" in out
    assert "plain HTTP: transfers are not encrypted" in out
    listed = exercise_commands(capsys, env, source, tmp_path)
    # key: a second password opens it too, then goes
    code, out, err = run(capsys, ["key", "add"], {**env, "BACKUP_NEW_REPOSITORY_PASSWORD": "a second one"})
    assert code == 0 and "added key" in out, err
    added = out.split()[2].rstrip(":")
    code, out, _ = run(capsys, ["key", "list"], env)
    assert code == 0 and added in out
    fresh = {**env, "BACKUP_REPOSITORY_PASSWORD": "a second one", "BACKUP_STATE_DIR": str(tmp_path / "fresh")}
    assert run(capsys, ["snapshots"], fresh)[0] == 0
    assert run(capsys, ["key", "remove", added], env)[0] == 0
    assert run(capsys, ["snapshots"], {**fresh, "BACKUP_STATE_DIR": str(tmp_path / "fresh2")})[0] == 1
    # forget: keep the last one, remove what only the first needed
    code, out, err = run(capsys, ["forget"], {**env, "BACKUP_KEEP_LAST": "1"})
    assert code == 0, out + err
    code, out, _ = run(capsys, ["snapshots", "--json"], env)
    assert [snapshot["id"] for snapshot in json.loads(out)] == [listed[1]["id"]]
    assert run(capsys, ["check", "--read-data"], env)[0] == 0
    code, out, _ = run(capsys, ["doctor"], env)
    assert code == 0 and "ok   target: s3+http://watcher-test@127.0.0.1:" in out and "1 snapshots" in out


def test_a_fresh_machine_with_only_the_target_restores_and_the_bucket_holds_nothing_readable(
        s3_server, tmp_path, capsys):
    src = make_tree(tmp_path / "src", MARKERS)
    env = s3_env(s3_server, src, tmp_path, "fresh")
    assert run(capsys, ["backup"], env)[0] == 0
    bucket = env["BACKUP_TARGET"].split("/")[3]
    backend = s3_server.backend(bucket)
    copy = tmp_path / "bucket"
    try:
        keys = [info.key for info in backend.list()]
        assert {key.split("/")[1] for key in keys} >= {"config", "keys", "snapshots", "index", "packs"}
        for key in keys:  # the objects are the repository's files, under the prefix
            make_tree(copy, {key: backend.get_bytes(key, 1 << 30)})
    finally:
        backend.close()
    assert_nothing_readable(copy)
    fresh = {key: value for key, value in env.items() if key != "BACKUP_SOURCES"}
    fresh["BACKUP_STATE_DIR"] = str(tmp_path / "another-machine-state")
    code, out, _ = run(capsys, ["snapshots"], fresh)
    assert code == 0 and "1 snapshots" in out
    assert run(capsys, ["restore", "latest", "--to", str(tmp_path / "out")], fresh)[0] == 0
    assert restored_files(tmp_path / "out", src) == MARKERS


def test_https_with_the_ca_file_and_an_untrusted_certificate(s3_server, source, tmp_path, capsys):
    env = s3_env(s3_server, source, tmp_path, "https", tls=True)
    code, out, err = run(capsys, ["backup"], env)
    assert code == 0, out + err
    assert run(capsys, ["restore", "latest", "--to", str(tmp_path / "out")], env)[0] == 0
    assert describe_tree(tmp_path / "out" / str(source).lstrip("/")) == describe_tree(source)
    del env["BACKUP_TLS_CA_FILE"]  # the system store does not know the test CA
    code, out, err = run(capsys, ["snapshots"], env)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "certificate" in lines[0] and "BACKUP_TLS_CA_FILE" in lines[0], err
    assert "Traceback" not in err
    plain_port = env["BACKUP_TARGET"].replace(str(s3_server.https_port), str(s3_server.port))
    code, out, err = run(capsys, ["snapshots"], {**env, "BACKUP_TARGET": plain_port})
    assert code == 1 and "s3+http://" in err and "Traceback" not in err


def test_a_new_repository_on_s3_needs_a_password(s3_server, source, tmp_path, capsys):
    env = s3_env(s3_server, source, tmp_path, "plain")
    del env["BACKUP_REPOSITORY_PASSWORD"]
    code, _out, err = run(capsys, ["backup"], env)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and lines == [err.splitlines()[-1]] and lines[0].startswith("error: BACKUP_REPOSITORY_PASSWORD:")
    code, out, _ = run(capsys, ["doctor"], env)
    assert code == 1 and "would refuse to create it" in out
    assert run(capsys, ["backup"], {**env, "BACKUP_ENCRYPTION": "none"})[0] == 0


@pytest.mark.parametrize("who", ["wrong secret", "unknown key id"])
def test_bad_credentials_are_one_clear_line_and_not_retried(s3_server, source, tmp_path, capsys, who):
    secret = "Wrong-S3-Secret-123"
    env = s3_env(s3_server, source, tmp_path, "auth", BACKUP_TARGET_PASSWORD=secret)
    if who == "unknown key id":
        env["BACKUP_TARGET"] = env["BACKUP_TARGET"].replace("watcher-test@", "nobody@")
    began = time.monotonic()
    code, out, err = run(capsys, ["backup"], env)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "refused the credentials" in lines[0] and "attempt 2" not in err
    assert secret not in out + err
    assert time.monotonic() - began < 20
    logs = "".join(path.read_text() for path in (tmp_path / "state" / "logs").glob("*"))
    assert "refused the credentials" in logs and secret not in logs
    code, out, err = run(capsys, ["doctor"], env)
    assert code == 1 and "FAIL target: " in out and "refused the credentials" in out and secret not in out + err


def test_credentials_from_the_aws_variables(s3_server, source, tmp_path, capsys):
    env = s3_env(s3_server, source, tmp_path, "aws-variables", AWS_ACCESS_KEY_ID=s3_server.key_id,
                 AWS_SECRET_ACCESS_KEY=s3_server.secret)
    del env["BACKUP_TARGET_PASSWORD"]
    env["BACKUP_TARGET"] = env["BACKUP_TARGET"].replace(f"{s3_server.key_id}@", "")
    code, out, err = run(capsys, ["backup"], env)
    assert code == 0, err
    code, out, _ = run(capsys, ["snapshots"], env)
    assert code == 0 and "1 snapshots" in out and s3_server.secret not in out


def test_a_key_that_may_not_write_or_create_the_bucket(s3_server, source, tmp_path, capsys):
    for name in ("reader", "writer"):
        key_id, secret = identity(name)
        env = s3_env(s3_server, source, tmp_path, name, BACKUP_TARGET_PASSWORD=secret)
        env["BACKUP_TARGET"] = env["BACKUP_TARGET"].replace("watcher-test@", f"{key_id}@")
        code, _out, err = run(capsys, ["backup"], env)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
        assert "does not exist and this access key may not create it" in lines[0], lines[0]
    # the reader in a bucket that exists: it may list and restore, not write
    owner = s3_env(s3_server, source, tmp_path, "shared")
    assert run(capsys, ["backup"], owner)[0] == 0
    key_id, secret = identity("reader")
    reader = {**owner, "BACKUP_TARGET_PASSWORD": secret, "BACKUP_STATE_DIR": str(tmp_path / "reader-state"),
              "BACKUP_TARGET": owner["BACKUP_TARGET"].replace("watcher-test@", f"{key_id}@")}
    assert run(capsys, ["restore", "latest", "--to", str(tmp_path / "out")], reader)[0] == 0
    (source / "docs/new.txt").write_text("new")
    code, _out, err = run(capsys, ["backup"], reader)
    assert code == 1 and "refused access" in err and "Traceback" not in err


def test_aws_profiles_and_files_are_not_read(s3_server, source, tmp_path, capsys, monkeypatch):
    """What the variables say is all that is used: a profile this machine lacks, and AWS config and
    credentials files botocore cannot parse, change nothing."""
    garbage = tmp_path / "aws-garbage"
    garbage.write_text("[profile\nthis is = not = ini\n")
    monkeypatch.setenv("AWS_PROFILE", "not-on-this-machine")
    monkeypatch.setenv("AWS_DEFAULT_PROFILE", "not-on-this-machine")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(garbage))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(garbage))
    env = s3_env(s3_server, source, tmp_path, "profiles")
    code, _out, err = run(capsys, ["backup"], env)
    assert code == 0, err
    assert run(capsys, ["snapshots"], env)[0] == 0


def test_a_server_that_is_down_is_transient(s3_server, source, tmp_path, capsys):
    env = s3_env(s3_server, source, tmp_path, "down")
    env["BACKUP_TARGET"] = f"s3+http://watcher-test@127.0.0.1:{free_port()}/nothing-listens"
    code, _out, err = run(capsys, ["backup"], env)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "cannot reach the S3 server" in lines[0], err
    assert "attempt 2 of" in err  # retried: a transient error
    assert "Traceback" not in err


def test_failure_mail_for_a_wrong_secret(s3_server, source, tmp_path, smtp_server: SmtpServer, capsys):
    secret = "Wrong-S3-Secret-123"
    env = {**s3_env(s3_server, source, tmp_path, "mail", BACKUP_TARGET_PASSWORD=secret), **smtp_server.environment()}
    assert run(capsys, ["backup"], env)[0] == 1
    [message] = smtp_server.messages()
    assert "Error Backup" in message["Subject"]
    body = message.get_body(("plain",)).get_content()
    assert "Cause:" in body and secret not in message.as_string() and "s3+http://watcher-test@" in body


def _count(backend, folder: str) -> int:
    return sum(1 for _ in backend.list(folder))


@pytest.mark.parametrize("moment", ["after the first pack", "after the first index"])
def test_kill_9_during_an_s3_backup(s3_server, tmp_path, moment, capsys):
    source = make_tree(tmp_path / "src", {f"f{i}.bin": os.urandom(3 * 1024 * 1024) for i in range(12)})
    env = s3_env(s3_server, source, tmp_path, "crash", BACKUP_ENCRYPTION="none")
    del env["BACKUP_REPOSITORY_PASSWORD"]
    bucket = env["BACKUP_TARGET"].split("/")[3]
    backend = s3_server.backend(bucket, "repo")
    try:
        Repository(backend, None).open(create=True, pack_size=1024 * 1024)  # small packs: many commit points
        folder = "packs" if moment == "after the first pack" else "index"
        process = subprocess.Popen([sys.executable, "-m", "watcher", "backup"], env={**os.environ, **env},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: _count(backend, folder) >= 1 or process.poll() is not None, 60, moment)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
    finally:
        backend.close()
    assert_recovers(capsys, env, source, tmp_path)


def test_daemon_backs_up_changes_and_survives_the_server_going_away(s3_server, source, tmp_path):
    s3_server.start()
    target = s3_env(s3_server, source, tmp_path, "daemon")
    env = {**daemon_env(source, tmp_path, target["BACKUP_TARGET"]), "BACKUP_TARGET_PASSWORD": s3_server.secret,
           "BACKUP_RETRY_MAX_SECONDS": "2"}
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start()
    try:
        daemon.wait_for_output("saved")
        (source / "docs/first.txt").write_text("an event")
        wait_until(lambda: f"{source}/docs/first.txt" in snapshot_paths(env), 60, "the change in a snapshot")
        outage(daemon, s3_server, env, source, tmp_path)
    finally:
        daemon.kill()
    assert "Traceback" not in daemon.output() and s3_server.secret not in daemon.output()
