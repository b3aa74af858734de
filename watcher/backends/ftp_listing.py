"""Folder listings of FTP servers: `MLSD` facts (RFC 3659), or `LIST` lines in the Unix
`ls -l` or DOS formats, which servers without MLSD (vsftpd among them) send instead.

Only names, types and sizes matter to the backend; a line in no known format (`total 12`)
is skipped rather than guessed at, and so is a symlink (`kind == "other"`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "file", "dir" or "other"
    size: int


_UNIX = re.compile(
    r"^(?P<mode>[-dlbcps])\S*\s+.*?(?P<size>\d+)\s+"
    r"(?:[A-Za-z]{3}\s+\d{1,2}\s+(?:\d{1,2}:\d{2}|\d{4})|\d{4}-\d{2}-\d{2}\s+\d{2}:\d{2})\s(?P<name>.+)$"
)
_DOS = re.compile(r"^\d{2}-\d{2}-\d{2,4}\s+\d{1,2}:\d{2}\s*(?:[AaPp][Mm])?\s+(?P<size><DIR>|\d+)\s+(?P<name>.+)$")


def parse_list(text: str) -> Iterator[Entry]:
    """Entries of a `LIST` answer."""
    for line in text.splitlines():
        unix = _UNIX.match(line)
        if unix:
            kind = {"-": "file", "d": "dir"}.get(unix["mode"], "other")
            yield Entry(unix["name"], kind, int(unix["size"]))
            continue
        dos = _DOS.match(line)
        if dos:
            folder = dos["size"] == "<DIR>"
            yield Entry(dos["name"], "dir" if folder else "file", 0 if folder else int(dos["size"]))


def parse_mlsd(text: str) -> Iterator[Entry]:
    """Entries of an `MLSD` answer: `fact=value;...; name` per line."""
    for line in text.splitlines():
        facts_text, separator, name = line.partition(" ")
        if not separator or not name:
            continue
        facts = {}
        for fact in facts_text.split(";"):
            key, _, value = fact.partition("=")
            facts[key.strip().lower()] = value.strip()
        kind = facts.get("type", "").lower()
        size = facts.get("size", "0")
        yield Entry(
            name,
            "file" if kind == "file" else "dir" if kind == "dir" else "other",
            int(size) if size.isdigit() else 0,
        )
