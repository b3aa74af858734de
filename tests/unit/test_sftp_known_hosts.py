"""Reading and extending OpenSSH known_hosts files, as the SFTP host key check does. No sockets."""

from __future__ import annotations

import stat
from pathlib import Path

import paramiko
import pytest

from watcher.backends.known_hosts import add_known_host, read_known_hosts

pytestmark = pytest.mark.timeout(30)

KEY = paramiko.ECDSAKey.generate()
OTHER = paramiko.ECDSAKey.generate()


def line(names: str, key: paramiko.PKey = KEY) -> str:
    return f"{names} {key.get_name()} {key.get_base64()}\n"


def keys(path: Path, name: str) -> list[str]:
    known, _revoked = read_known_hosts(path, name)
    return [key.get_base64() for key in known]


@pytest.mark.parametrize(
    ("names", "lookup", "found"),
    [
        ("example.org", "example.org", True),
        ("example.org", "[example.org]:2222", False),
        ("[example.org]:2222", "[example.org]:2222", True),
        ("[example.org]:2222", "example.org", False),
        ("other,Example.ORG", "example.org", True),
        ("*.example.org", "sftp.example.org", True),
        ("*.example.org,!secret.example.org", "secret.example.org", False),
        ("sftp?.example.org", "sftp1.example.org", True),
        ("[127.0.0.1]:2222", "[127.0.0.1]:2223", False),
        ("[127.0.0.1]:*", "[127.0.0.1]:2223", True),
    ],
)
def test_host_patterns(tmp_path: Path, names: str, lookup: str, found: bool) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(line(names))
    assert keys(path, lookup) == ([KEY.get_base64()] if found else [])


def test_hashed_names(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(line(paramiko.HostKeys.hash_host("[sftp.example.org]:2222")))
    assert keys(path, "[sftp.example.org]:2222") == [KEY.get_base64()]
    assert keys(path, "sftp.example.org") == []


def test_unreadable_lines_are_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(
        "# a comment\n\n"
        "example.org ssh-ed25519 not-base64!!\n"
        "example.org sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t\n"
        "@cert-authority *.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA\n"
        "too-short\n" + line("example.org")
    )
    assert keys(path, "example.org") == [KEY.get_base64()]


def test_revoked_keys(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("@revoked * " + line("", OTHER).lstrip() + line("example.org"))
    known, revoked = read_known_hosts(path, "example.org")
    assert [key.get_base64() for key in known] == [KEY.get_base64()]
    assert [key.get_base64() for key in revoked] == [OTHER.get_base64()]


def test_missing_file_knows_nothing(tmp_path: Path) -> None:
    assert read_known_hosts(tmp_path / "absent", "example.org") == ([], [])


def test_add_creates_private_file_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "new" / ".ssh" / "known_hosts"
    add_known_host(path, "[example.org]:2222", KEY)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == line("[example.org]:2222")
    assert keys(path, "[example.org]:2222") == [KEY.get_base64()]


def test_add_appends_after_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(line("first.example.org").rstrip("\n"))
    add_known_host(path, "second.example.org", OTHER)
    assert path.read_text() == line("first.example.org") + line("second.example.org", OTHER)
