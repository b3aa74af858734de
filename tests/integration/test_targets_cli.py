"""Several targets on real servers: each target's own password, SSH key and CA file (or the shared
ones), and the commands' `--target N` against an SFTP and an FTPS repository at once.

Each repository is filled by a one-target `backup`, so that these tests hold whatever a run does
with several targets; the two-target configuration is then read by the commands and `doctor`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trustme

from tests.fixtures.ftp import FtpServer
from tests.fixtures.sftp import SshServer
from tests.helpers import describe_tree, make_tree
from watcher.cli import main

pytestmark = pytest.mark.timeout(300)

FIRST_PASSWORD = "First-Target-Pw-31"  # never the password of the server accounts: a leak would show


def run(capsys, argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv, env)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src", {"docs/a.txt": "alpha", "docs/b.bin": os.urandom(300_000),
                                        "link": "->docs/a.txt"})


def sftp_url(server: SshServer, root: str) -> str:
    return f"sftp://{server.user}@{server.host}:{server.port}{root}"


def ftps_url(server: FtpServer, root: str) -> str:
    return f"ftps://{server.user}@{server.host}:{server.port}{root}"


def base(source: Path, tmp_path: Path, server: SshServer) -> dict[str, str]:
    return {"BACKUP_SOURCES": str(source), "BACKUP_ENCRYPTION": "none", "BACKUP_STATE_DIR": str(tmp_path / "state"),
            "BACKUP_SSH_KNOWN_HOSTS": str(server.known_hosts), "BACKUP_HOST": "targets-host"}


def other_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the FTPS server's certificate."""
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def doctor_lines(capsys, env: dict[str, str]) -> tuple[int, list[str]]:
    code, out, err = run(capsys, ["doctor"], env)
    assert [line for line in err.splitlines() if line.startswith("error:")] == []
    return code, out.splitlines()


def test_the_second_targets_own_ssh_key_logs_in_and_the_shared_one_is_its_fallback(sshd_server, source, tmp_path,
                                                                                      capsys):
    sshd_server.need_local()
    root = sshd_server.scratch("own-key")
    good, refused = sshd_server.client_keys["ed25519"], sshd_server.client_keys["unauthorized"]
    alone = {**base(source, tmp_path, sshd_server), "BACKUP_TARGET": sftp_url(sshd_server, root),
             "BACKUP_SSH_KEY": str(good)}
    assert run(capsys, ["backup"], alone)[0] == 0
    two = {**base(source, tmp_path, sshd_server), "BACKUP_TARGET": f"file://{tmp_path}/repo",
           "BACKUP_TARGET_PASSWORD": FIRST_PASSWORD, "BACKUP_TARGET_2": sftp_url(sshd_server, root)}
    # Its own key, the shared one refused by the server: it logs in with its own, no password at all.
    own = {**two, "BACKUP_SSH_KEY": str(refused), "BACKUP_TARGET_2_SSH_KEY": str(good)}
    code, out, _ = run(capsys, ["snapshots", "--json", "--target", "2"], own)
    assert code == 0 and len(json.loads(out)) == 1
    # No key of its own: the shared one.
    shared = {**two, "BACKUP_SSH_KEY": str(good)}
    code, out, _ = run(capsys, ["snapshots", "--json", "--target", "2"], shared)
    assert code == 0 and json.loads(out)[0]["repository"]["url"] == sftp_url(sshd_server, root)
    # Its own key wins over the shared one: a refused own key fails even though the shared one would do.
    wrong = {**two, "BACKUP_SSH_KEY": str(good), "BACKUP_TARGET_2_SSH_KEY": str(refused)}
    code, out, err = run(capsys, ["snapshots", "--target", "2"], wrong)
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    code, lines = doctor_lines(capsys, wrong)
    assert code == 1 and [line.split(":")[0] for line in lines if line.startswith("FAIL")] == ["FAIL target 2"]
    assert FIRST_PASSWORD not in out + err + "".join(lines)


def test_the_second_targets_own_password_file(sshd_server, source, tmp_path, capsys):
    root = sshd_server.scratch("own-password")
    alone = {**base(source, tmp_path, sshd_server), "BACKUP_TARGET": sftp_url(sshd_server, root),
             "BACKUP_TARGET_PASSWORD": sshd_server.password}
    assert run(capsys, ["backup"], alone)[0] == 0
    secret = tmp_path / "second-password"
    secret.write_text(sshd_server.password + "\n")
    two = {**base(source, tmp_path, sshd_server), "BACKUP_TARGET": f"file://{tmp_path}/repo",
           "BACKUP_TARGET_PASSWORD": FIRST_PASSWORD, "BACKUP_TARGET_2": sftp_url(sshd_server, root)}
    own = {**two, "BACKUP_TARGET_2_PASSWORD_FILE": str(secret)}
    code, out, _ = run(capsys, ["snapshots", "--json", "--target", "2"], own)
    assert code == 0 and len(json.loads(out)) == 1
    # Without one, target 2 has no password: the first target's is not lent to it.
    code, out, err = run(capsys, ["snapshots", "--target", "2"], two)
    assert code == 1 and FIRST_PASSWORD not in out + err


def test_the_second_targets_own_ca_file_verifies_ftps_and_the_shared_one_is_its_fallback(ftps_server, sshd_server,
                                                                                          source, tmp_path, capsys):
    if ftps_server.ca_file is None:
        pytest.skip("the FTPS server is verified by the system store: no CA file to give")
    root = ftps_server.scratch("own-ca")
    alone = {**base(source, tmp_path, sshd_server), **ftps_server.env(root)}
    assert run(capsys, ["backup"], alone)[0] == 0
    two = {**base(source, tmp_path, sshd_server), "BACKUP_TARGET": f"file://{tmp_path}/repo",
           "BACKUP_TARGET_2": ftps_url(ftps_server, root), "BACKUP_TARGET_2_PASSWORD": ftps_server.password}
    wrong_ca = other_ca(tmp_path)
    own = {**two, "BACKUP_TLS_CA_FILE": str(wrong_ca), "BACKUP_TARGET_2_TLS_CA_FILE": str(ftps_server.ca_file)}
    code, out, _ = run(capsys, ["snapshots", "--json", "--target", "2"], own)
    assert code == 0 and len(json.loads(out)) == 1
    shared = {**two, "BACKUP_TLS_CA_FILE": str(ftps_server.ca_file)}
    assert run(capsys, ["check", "--target", "2"], shared)[0] == 0
    wrong = {**two, "BACKUP_TLS_CA_FILE": str(ftps_server.ca_file), "BACKUP_TARGET_2_TLS_CA_FILE": str(wrong_ca)}
    code, out, err = run(capsys, ["snapshots", "--target", "2"], wrong)
    assert code == 1 and out == "" and len(err.splitlines()) == 1, err
    code, lines = doctor_lines(capsys, wrong)
    assert code == 1 and [line.split(":")[0] for line in lines if line.startswith("FAIL")] == ["FAIL target 2"]
    assert ftps_server.password not in out + err + "".join(lines)


def test_every_command_on_an_sftp_and_an_ftps_target(sshd_server, ftps_server, source, tmp_path, capsys):
    sftp_root, ftps_root = sshd_server.scratch("two-sftp"), ftps_server.scratch("two-ftps")
    common = base(source, tmp_path, sshd_server)
    first = {**common, "BACKUP_TARGET": sftp_url(sshd_server, sftp_root),
             "BACKUP_TARGET_PASSWORD": sshd_server.password}
    assert run(capsys, ["backup"], first)[0] == 0
    (source / "docs/a.txt").write_text("alpha, only in the ftps target")
    second = {**common, **ftps_server.env(ftps_root), "BACKUP_STATE_DIR": str(tmp_path / "state2")}
    assert run(capsys, ["backup"], second)[0] == 0
    env = {**first, "BACKUP_TARGET_2": ftps_url(ftps_server, ftps_root),
           "BACKUP_TARGET_2_PASSWORD": ftps_server.password}
    if ftps_server.ca_file:
        env["BACKUP_TARGET_2_TLS_CA_FILE"] = str(ftps_server.ca_file)

    listed = {n: json.loads(run(capsys, ["snapshots", "--json", "--target", str(n)], env)[1]) for n in (1, 2)}
    assert listed[1][0]["repository"] == {"number": 1, "url": sftp_url(sshd_server, sftp_root)}
    assert listed[2][0]["repository"] == {"number": 2, "url": ftps_url(ftps_server, ftps_root)}
    assert listed[1][0]["id"] != listed[2][0]["id"]
    code, out, _ = run(capsys, ["ls", "latest", str(source / "docs"), "--target", "2"], env)
    assert code == 0 and out.splitlines()[0] == f"target 2 ({ftps_url(ftps_server, ftps_root)})"
    code, out, _ = run(capsys, ["diff", listed[2][0]["id"], "latest", "--target", "2"], env)
    assert code == 0 and "0 added, 0 removed, 0 changed" in out
    for number in (1, 2):
        to = str(tmp_path / f"out{number}")
        code, out, _ = run(capsys, ["restore", "latest", "--target", str(number), "--to", to], env)
        assert code == 0, out
        code, out, _ = run(capsys, ["check", "--read-data", "--target", str(number)], env)
        assert code == 0 and "repository sound" in out
    restored = tmp_path / "out2" / str(source).lstrip("/")
    assert describe_tree(restored) == describe_tree(source)
    assert (tmp_path / "out1" / str(source).lstrip("/") / "docs/a.txt").read_text() == "alpha"
    code, lines = doctor_lines(capsys, env)
    assert code == 0, lines
    assert f"ok   target 1: {sftp_url(sshd_server, sftp_root)}" in lines
    assert f"ok   target 2: {ftps_url(ftps_server, ftps_root)}" in lines
    assert "ok   target 1 repository: 1 snapshots, 1 packs, not encrypted (format 1)" in lines
    code, out, err = run(capsys, ["snapshots", "--target", "3"], env)
    assert (code, out, err) == (2, "", "error: --target 3: BACKUP_TARGET_3 is not set (the targets are 1 and 2)\n")
    for secret in (sshd_server.password, ftps_server.password):
        assert all(secret not in path.read_text(errors="replace") for path in (tmp_path / "state").rglob("*.log"))
