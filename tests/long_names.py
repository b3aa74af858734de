"""Names of 255 bytes (NAME_MAX) made of multi-byte characters, for the restore tests on every target."""

from __future__ import annotations

import os
from pathlib import Path

NAME_MAX = 255

# Each is exactly NAME_MAX bytes on disk; the odd prefixes move the cut point inside a character.
LONG_NAMES: dict[str, str] = {
    "2-byte": "é" * 127 + "x",
    "2-byte-offset": "x" + "é" * 127,
    "3-byte": "€" * 85,
    "3-byte-offset": "ab" + "€" * 84 + "c",
    "4-byte": "🎉" * 63 + "abc",
    "4-byte-offset": "a" + "🎉" * 63 + "bc",
    "not-utf8": os.fsdecode(b"\xff" * NAME_MAX),
    "mixed": os.fsdecode(b"\xe9" + "é€🎉".encode() * 28 + b"\xff" * 2),
}


def make_long_names(source: Path) -> None:
    """One file per name, and a folder with a long name holding one."""
    for label, name in LONG_NAMES.items():
        assert len(os.fsencode(name)) == NAME_MAX, label
        content = f"content of {label}\n".encode()
        (source / name).write_bytes(content)
    folder = source / ("d" + "é" * 127)
    folder.mkdir()
    (folder / LONG_NAMES["4-byte"]).write_bytes(b"inside a long folder\n")


def assert_same_names(source: Path, restored: Path) -> None:
    """Every name and content below `source` is below `restored`, byte for byte, and nothing else."""

    def listing(root: Path) -> dict[bytes, bytes | None]:
        found: dict[bytes, bytes | None] = {}
        for folder, dirs, files in os.walk(os.fsencode(root)):
            for name in dirs + files:
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, os.fsencode(root))
                found[relative] = None if os.path.isdir(path) else Path(os.fsdecode(path)).read_bytes()
        return found

    assert listing(restored) == listing(source)
