"""Small helpers shared by the tests: source trees, repositories, tree comparison."""

from __future__ import annotations

import os
from pathlib import Path

from watcher.actions.backup import BackupOptions, BackupResult, run_backup
from watcher.backends.base import Backend
from watcher.backends.memory import MemoryBackend
from watcher.repository import Repository


def open_repository(backend: Backend | None = None, state_dir: Path | None = None) -> Repository:
    repository = Repository(backend or MemoryBackend(), state_dir)
    repository.backend.open()
    repository.open(create=True)
    repository.load_index()
    return repository


def backup(repository: Repository, *sources: Path, exclude: tuple[str, ...] = (), host: str = "test") -> BackupResult:
    return run_backup(repository, BackupOptions(tuple(sources), exclude, host))


def make_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Create `files` (relative path -> content; content '->target' makes a symlink, '/' a folder)."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "/":
            path.mkdir(exist_ok=True)
        elif isinstance(content, str) and content.startswith("->"):
            path.symlink_to(content[2:])
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def describe_tree(root: Path) -> dict[str, tuple]:
    """Everything restore must reproduce: type, content, mode, mtime, link target."""
    result: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            relative = str(path.relative_to(root))
            if path.is_symlink():
                result[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                result[relative] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                result[relative] = ("file", path.read_bytes(), st.st_mode, st.st_mtime_ns)
    return result


def keep_growing(monkeypatch, path: Path) -> None:
    """Make `path` grow each time a reader looks at its state (fstat): it never stays still for a read."""
    real_fstat = os.fstat

    def always_growing(fd: int) -> os.stat_result:
        result = real_fstat(fd)
        if os.readlink(f"/proc/self/fd/{fd}") == os.path.realpath(path):
            with open(path, "a") as handle:
                handle.write("x")
        return result

    monkeypatch.setattr(os, "fstat", always_growing)
