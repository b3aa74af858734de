"""Files and folders only their owner can read: a `file://` repository and the state folder.

A repository holds everything the sources hold; the cache and the run logs name every file.
So each folder watcher creates is 0700 and each file 0600, whatever the umask: the mode is
given when the file or folder is created, so there is no moment when another user could open
it. Folders that exist already are left as they are: their owner chose their modes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600
log = logging.getLogger(__name__)
_NEW_FILE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def make_folders(path: Path) -> None:
    """`mkdir -p` where each folder created is 0700; a file in the way raises OSError."""
    missing: list[Path] = []
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, FOLDER_MODE)
        except FileExistsError:
            if not folder.is_dir():  # another process may have made it meanwhile: that is fine
                raise


def create_file(path: Path, flags: int = os.O_WRONLY) -> int:
    """A new file, 0600, opened with `flags`; never an existing one, never through a symlink."""
    return os.open(path, flags | _NEW_FILE, FILE_MODE)


def ensure_file(path: Path) -> None:
    """Create `path` 0600 if it does not exist, so that what opens it next (SQLite) keeps that mode."""
    try:
        os.close(create_file(path))
    except FileExistsError:
        return


def write_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically, through a private temporary file beside it."""
    make_folders(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class StateFile:
    """A small file in the state folder, rewritten whole (health, pending changes, mail state).

    A full or broken state folder costs that file, never its caller: a failure to write it is
    logged once per reason until a write works again, not at every tick of the daemon.
    """

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.failing: str | None = None

    def write(self, data: bytes) -> bool:
        try:
            write_file(self.path, data)
        except OSError as error:
            reason = error.strerror or str(error)
            if reason != self.failing:
                log.warning("cannot write the %s in %s: %s", self.what, self.path, reason)
            self.failing = reason
            return False
        self.failing = None
        return True
