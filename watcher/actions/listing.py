"""Read-only views of a repository: snapshots, the entries of one, and what two differ in."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from watcher.errors import SnapshotNotFoundError
from watcher.repository import Repository, iter_tree
from watcher.snapshot import Node, Snapshot
from watcher.text import printable


@dataclass(frozen=True)
class Entry:
    path: str
    node: Node

    def as_json(self) -> dict[str, object]:
        node = self.node
        data: dict[str, object] = {
            "path": self.path,
            "type": node.kind,
            "mode": oct(node.mode),
            "mtime_ns": node.mtime_ns,
            "uid": node.uid,
            "gid": node.gid,
        }
        if node.kind == "file":
            data["size"] = node.size
        if node.kind == "symlink":
            data["target"] = node.target
        return data

    def as_line(self) -> str:
        node = self.node
        kind = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}[node.kind]
        suffix = f" -> {printable(node.target)}" if node.kind == "symlink" else ""
        when = datetime.fromtimestamp(node.mtime_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        mode = stat.filemode(kind | node.mode)
        return f"{mode} {node.uid:>5} {node.gid:>5} {node.size:>12} {when} {printable(self.path)}{suffix}"


def snapshot_as_json(snapshot: Snapshot) -> dict[str, object]:
    summary = snapshot.summary
    return {
        "id": snapshot.id,
        "time": snapshot.time_text,
        "host": snapshot.host,
        "sources": list(snapshot.sources),
        "files": summary.files,
        "bytes": summary.bytes,
        "bytes_added": summary.bytes_added,
        "parent": snapshot.parent,
        "tree": snapshot.tree,
    }


def _find_node(repository: Repository, tree_id: str, path: str) -> tuple[str, Node | None]:
    """The node at `path` ('/' for the root), or raise when the snapshot has no such path."""
    parts = [part for part in path.split("/") if part]
    tree, node = tree_id, None
    for depth, name in enumerate(parts):
        if tree is None:
            raise SnapshotNotFoundError(f"{path}: no such path in the snapshot")
        match = next((child for child in repository.load_tree(tree) if child.name == name), None)
        if match is None:
            raise SnapshotNotFoundError(f"{path}: no such path in the snapshot")
        node = match
        tree = match.subtree if match.kind == "dir" else None
        if depth < len(parts) - 1 and match.kind != "dir":
            raise SnapshotNotFoundError(f"{path}: no such path in the snapshot")
    return "/" + "/".join(parts), node


def list_entries(repository: Repository, snapshot: Snapshot, path: str = "/") -> Iterator[Entry]:
    """Every entry at or below `path` in the snapshot, depth first; a snapshot whose trees
    expand beyond what it may hold is refused before the first entry."""
    where, node = _find_node(repository, snapshot.tree, path)
    if node is None:
        repository.check_expansion(snapshot)
        for full, child in iter_tree(repository, snapshot.tree):
            yield Entry(full, child)
        return
    if node.kind == "dir" and node.subtree:
        repository.check_expansion(snapshot, node.subtree)
    yield Entry(where, node)
    if node.kind == "dir" and node.subtree:
        for full, child in iter_tree(repository, node.subtree, where):
            yield Entry(full, child)


@dataclass
class Difference:
    added: list[str]
    removed: list[str]
    changed: list[str]


def diff_snapshots(repository: Repository, first: Snapshot, second: Snapshot) -> Difference:
    """Paths added, removed and changed from `first` to `second`; equal subtrees are skipped."""
    repository.check_expansion(first)
    repository.check_expansion(second)
    result = Difference([], [], [])

    def every_path(tree: str, prefix: str) -> Iterator[str]:
        for full, _node in iter_tree(repository, tree, prefix):
            yield full

    pending: list[tuple[str | None, str | None, str]] = [(first.tree, second.tree, "")]
    while pending:
        old_tree, new_tree, prefix = pending.pop()
        if old_tree == new_tree:
            continue
        old = {node.name: node for node in repository.load_tree(old_tree)} if old_tree else {}
        new = {node.name: node for node in repository.load_tree(new_tree)} if new_tree else {}
        for name in sorted(old.keys() | new.keys()):
            path = f"{prefix}/{name}"
            before, after = old.get(name), new.get(name)
            if before is None:
                result.added.append(path)
                if after.kind == "dir" and after.subtree:
                    result.added.extend(every_path(after.subtree, path))
            elif after is None:
                result.removed.append(path)
                if before.kind == "dir" and before.subtree:
                    result.removed.extend(every_path(before.subtree, path))
            elif before.kind == "dir" and after.kind == "dir":
                if (before.mode, before.mtime_ns, before.uid, before.gid) != (
                    after.mode, after.mtime_ns, after.uid, after.gid,
                ):
                    result.changed.append(path)
                pending.append((before.subtree, after.subtree, path))
            elif before.kind == "dir" or after.kind == "dir":
                pending.append((before.subtree if before.kind == "dir" else None,
                                after.subtree if after.kind == "dir" else None, path))
                result.changed.append(path)
            elif before != after:
                result.changed.append(path)
    return result
