"""Progress bars for long `backup` and `restore` runs, on a terminal only (quiet otherwise)."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from watcher.actions.backup import Progress
from watcher.actions.restore import RestoreProgress


def wanted(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return not stream.closed and stream.isatty()


class BackupBar(Progress):
    def __init__(self) -> None:
        self.bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="read", leave=False, file=sys.stderr)
        self.files = 0

    def bytes_read(self, size: int) -> None:
        self.bar.update(size)

    def file_done(self, path: str, size: int) -> None:
        self.files += 1
        if self.files % 100 == 0:
            self.bar.set_postfix(files=self.files, refresh=False)

    def close(self) -> None:
        self.bar.close()


class RestoreBar(RestoreProgress):
    def __init__(self) -> None:
        self.bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="restore", leave=False, file=sys.stderr)

    def start(self, total_bytes: int) -> None:
        self.bar.reset(total=total_bytes)

    def advance(self, size: int) -> None:
        self.bar.update(size)

    def close(self) -> None:
        self.bar.close()
