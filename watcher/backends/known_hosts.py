"""OpenSSH known_hosts files: which keys vouch for a host, and recording a new one.

paramiko's own reader raises on `@cert-authority` lines and knows no wildcards, so the host
key check reads the file itself, the way OpenSSH does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import paramiko


def read_known_hosts(path: Path, name: str) -> tuple[list[paramiko.PKey], list[paramiko.PKey]]:
    """The keys known for `name` in an OpenSSH known_hosts file, and those marked `@revoked`.

    Lines paramiko cannot parse (unknown key types, `@cert-authority`) are skipped, where
    `paramiko.HostKeys.load` would raise on some of them. A missing file knows no key.
    """
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return [], []
    known: list[paramiko.PKey] = []
    revoked: list[paramiko.PKey] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        marker = ""
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
            if marker != "@revoked":
                continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
        except Exception:  # a line we cannot read cannot vouch for a host
            continue
        if entry is None or entry.key is None or not _names_match(entry.hostnames, name):
            continue
        (revoked if marker else known).append(entry.key)
    return known, revoked


def _names_match(patterns: list[str], name: str) -> bool:
    """OpenSSH host patterns: hashed `|1|salt|hash`, `*`/`?` wildcards, `!negation`."""
    lowered = name.lower()
    matched = False
    for pattern in patterns:
        if pattern.startswith("|1|"):
            try:
                hit = paramiko.HostKeys.hash_host(name, pattern) == pattern
            except Exception:  # a malformed hash matches nothing
                hit = False
        else:
            negated = pattern.startswith("!")
            hit = _glob(pattern.lstrip("!").lower()).fullmatch(lowered) is not None
            if hit and negated:
                return False
            if negated:
                continue
        matched = matched or hit
    return matched


def _glob(pattern: str) -> re.Pattern[str]:
    """OpenSSH patterns know only `*` and `?`; `[` is literal (as in `[host]:port`)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def add_known_host(path: Path, name: str, key: paramiko.PKey) -> None:
    """Append `name`'s key, creating the file (0600) and its folder (0700) as ssh does."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "ab") as file:
        prefix = b""
        if file.tell() > 0:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                prefix = b"" if existing.read(1) == b"\n" else b"\n"
        file.write(prefix + f"{name} {key.get_name()} {key.get_base64()}\n".encode())
