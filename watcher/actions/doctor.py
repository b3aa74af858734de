"""`doctor`: is everything in place for a backup? One verdict per check, nothing written."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watcher.errors import WatcherError
from watcher.private import create_file, make_folders
from watcher.repository import Repository


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: not applicable
    name: str
    detail: str


def check_sources(sources: tuple[Path, ...]) -> Verdict:
    unreadable = [str(path) for path in sources if not os.access(path, os.R_OK | os.X_OK)]
    if unreadable:
        return Verdict(False, "sources", f"cannot read {', '.join(unreadable)}")
    return Verdict(True, "sources", ", ".join(str(path) for path in sources))


def check_state_dir(state_dir: Path) -> Verdict:
    try:
        make_folders(state_dir)
        probe = state_dir / f".doctor-{os.getpid()}"
        os.close(create_file(probe))
        probe.unlink()
    except OSError as error:
        return Verdict(False, "state folder", f"{state_dir}: {error.strerror or error}")
    return Verdict(True, "state folder", str(state_dir))


def check_repository(open_repository: Callable[[], Repository], where: str, name: str = "target",
                     repository_name: str = "repository", creation: tuple[bool, str] = (True, "")) -> list[Verdict]:
    """Reach a target and read its repository (a missing repository is fine if backup may create it:
    `creation` says whether, and how); `name` and `repository_name` tell the checks of several targets apart."""
    try:
        repository = open_repository()
    except WatcherError as error:
        if "no repository at" in str(error):
            allowed, how = creation
            return [Verdict(allowed, name, f"{where} reachable; no repository yet ({how})")]
        return [Verdict(False, name, str(error))]
    try:
        count = len(repository.snapshot_ids())
        encrypted = "encrypted" if repository.codec.encrypted else "not encrypted"
        detail = f"{count} snapshots, {len(repository.packs)} packs, {encrypted} (format {repository.codec.version})"
        return [Verdict(True, name, where), Verdict(True, repository_name, detail)]
    except WatcherError as error:
        return [Verdict(True, name, where), Verdict(False, repository_name, str(error))]
    finally:
        repository.close()
