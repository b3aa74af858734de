"""Snapshots and trees, and their versioned JSON codec (pure: no I/O).

A tree is one folder: its entries sorted by name. A file entry lists the ids of its content
chunks, a folder entry the id of its own tree. Identical folders therefore have identical
tree ids, which is what makes an unchanged folder cost nothing to store again.
Names are the file system's bytes decoded as UTF-8 with `surrogateescape`; JSON keeps the
escapes (`ensure_ascii`), so names that are not UTF-8 survive the round trip.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from watcher.errors import IntegrityError

TREE_VERSION = 1
SNAPSHOT_VERSION = 1
KINDS = ("file", "dir", "symlink")


@dataclass(frozen=True)
class Node:
    """One entry of a folder."""

    name: str
    kind: str
    mode: int
    mtime_ns: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    content: tuple[str, ...] = ()
    subtree: str | None = None
    target: str | None = None

    def same_content(self, other: Node) -> bool:
        """True when both entries would restore to the same thing."""
        return self == other


@dataclass(frozen=True)
class Summary:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    bytes_read: int = 0
    bytes_added: int = 0
    warnings: int = 0
    duration_seconds: float = 0.0


@dataclass(frozen=True)
class Incomplete:
    """What a snapshot holds less of, or older, than its sources had: sources that could not be
    read or were found empty where an earlier snapshot had content (retention is not applied after
    such a run), and files that kept changing while read, stored as their parent snapshot had them."""

    sources: tuple[str, ...] = ()
    kept_previous: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    id: str
    time: datetime
    host: str
    sources: tuple[str, ...]
    tree: str
    parent: str | None = None
    summary: Summary = field(default_factory=Summary)
    incomplete: Incomplete = field(default_factory=Incomplete)

    @property
    def time_text(self) -> str:
        return format_time(self.time)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_snapshot_id(moment: datetime) -> str:
    """`YYYYMMDDTHHMMSSZ-xxxxxxxx`: sorts by time, a date is a usable prefix, never collides."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ-") + os.urandom(4).hex()


def _node_to_json(node: Node) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": node.name,
        "type": node.kind,
        "mode": node.mode,
        "mtime_ns": node.mtime_ns,
        "uid": node.uid,
        "gid": node.gid,
    }
    if node.kind == "file":
        data["size"] = node.size
        data["content"] = list(node.content)
    elif node.kind == "dir":
        data["subtree"] = node.subtree
    else:
        data["target"] = node.target
    return data


def _node_from_json(data: dict[str, Any]) -> Node:
    kind = data["type"]
    if kind not in KINDS:
        raise ValueError(f"unknown entry type {kind!r}")
    name = data["name"]
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"unsafe entry name {name!r}")
    return Node(
        name=name,
        kind=kind,
        mode=int(data["mode"]),
        mtime_ns=int(data["mtime_ns"]),
        uid=int(data.get("uid", 0)),
        gid=int(data.get("gid", 0)),
        size=int(data.get("size", 0)),
        content=tuple(str(chunk) for chunk in data.get("content", ())),
        subtree=data.get("subtree"),
        target=data.get("target"),
    )


def encode_tree(nodes: list[Node]) -> bytes:
    """Canonical bytes of a folder: the same entries always give the same tree id."""
    ordered = sorted(nodes, key=lambda node: node.name)
    document = {"version": TREE_VERSION, "entries": [_node_to_json(node) for node in ordered]}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def decode_tree(data: bytes, tree_id: str = "") -> list[Node]:
    try:
        document = json.loads(data)
        if document.get("version") != TREE_VERSION:
            raise ValueError(f"unknown tree version {document.get('version')!r}")
        return [_node_from_json(entry) for entry in document["entries"]]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IntegrityError(f"tree {tree_id[:12]} cannot be read: {error}") from error


def encode_snapshot(snapshot: Snapshot) -> bytes:
    document = {
        "version": SNAPSHOT_VERSION,
        "time": snapshot.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "host": snapshot.host,
        "sources": list(snapshot.sources),
        "tree": snapshot.tree,
        "parent": snapshot.parent,
        "summary": vars(snapshot.summary),
    }
    if snapshot.incomplete != Incomplete():
        document["incomplete"] = {"sources": list(snapshot.incomplete.sources),
                                  "kept_previous": list(snapshot.incomplete.kept_previous)}
    return json.dumps(document, sort_keys=True, indent=1).encode()


def decode_snapshot(snapshot_id: str, data: bytes) -> Snapshot:
    try:
        document = json.loads(data)
        if document.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown snapshot version {document.get('version')!r}")
        summary_fields = set(Summary.__dataclass_fields__)
        summary = Summary(**{k: v for k, v in document.get("summary", {}).items() if k in summary_fields})
        marks = document.get("incomplete", {})
        incomplete = Incomplete(tuple(map(str, marks.get("sources", ()))),
                                tuple(map(str, marks.get("kept_previous", ()))))
        return Snapshot(
            id=snapshot_id,
            time=datetime.fromisoformat(document["time"].replace("Z", "+00:00")),
            host=str(document["host"]),
            sources=tuple(document["sources"]),
            tree=str(document["tree"]),
            parent=document.get("parent"),
            summary=summary,
            incomplete=incomplete,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise IntegrityError(f"snapshot {snapshot_id} cannot be read: {error}") from error
