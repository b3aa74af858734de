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
from datetime import UTC, datetime, timedelta
from typing import Any

from watcher import fields
from watcher.errors import IntegrityError

TREE_VERSION = 1
SNAPSHOT_VERSION = 1
KINDS = ("file", "dir", "symlink")
# Clocks of hosts sharing a repository differ by a little; a snapshot dated further ahead than this
# was saved by a wrong clock, and its time says nothing about which snapshot is the newest.
CLOCK_SKEW = timedelta(minutes=5)


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


def dated_in_future(snapshot: Snapshot, now: datetime) -> bool:
    """True when the snapshot's time lies beyond `now` by more than the clock skew hosts may have."""
    return snapshot.time > now + CLOCK_SKEW


def storable_ns(ns: int) -> int:
    """A file time as a tree holds it: years 1 to 9999, what every reader can show (tmpfs or btrfs
    keep any 64-bit time; one beyond that range would make the whole folder's tree unreadable)."""
    return min(max(ns, fields.NS_MIN), fields.NS_MAX)


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


def _node_from_json(value: object) -> Node:
    """One entry, every field checked: a value no file system could hold is refused here."""
    data = fields.mapping(value, "entry")
    kind = fields.choice(data["type"], "type", KINDS)
    common = (
        fields.name(data["name"]),
        kind,
        fields.integer(data["mode"], "mode", 0, fields.MODE_MAX),
        # Clamped, not refused: earlier watchers stored any time the file system
        # gave (tmpfs, btrfs keep any 64-bit time), and a date must never cost a file its content.
        storable_ns(fields.integer(data["mtime_ns"], "mtime_ns", -(2**127), 2**127)),
        fields.integer(data.get("uid", 0), "uid", 0, fields.ID_MAX),
        fields.integer(data.get("gid", 0), "gid", 0, fields.ID_MAX),
    )
    if kind == "file":
        return Node(*common, size=fields.integer(data.get("size", 0), "size"),
                    content=fields.hex_ids(data.get("content", []), "content"))
    if kind == "dir":
        subtree = data.get("subtree")  # a folder without one is damage that `check` reports
        return Node(*common, subtree=None if subtree is None else fields.hex_id(subtree, "subtree"))
    return Node(*common, target=fields.path_text(data["target"], "target"))


@dataclass(frozen=True)
class BadEntry:
    """An entry of a tree that cannot be read: its name when that much is readable, and why."""

    name: str | None
    message: str


def _bad_entry(tree_id: str, position: int, value: object, error: Exception) -> BadEntry:
    raw = value.get("name") if isinstance(value, dict) else None
    try:
        name = fields.name(raw)
    except ValueError:
        name = None
    label = f" ({fields.shown(raw)})" if isinstance(raw, str) else ""
    return BadEntry(name, f"tree {tree_id[:12]}, entry {position}{label} cannot be read: {fields.reason(error)}")


def encode_tree(nodes: list[Node]) -> bytes:
    """Canonical bytes of a folder: the same entries always give the same tree id."""
    ordered = sorted(nodes, key=lambda node: node.name)
    document = {"version": TREE_VERSION, "entries": [_node_to_json(node) for node in ordered]}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def read_tree(data: bytes, tree_id: str = "") -> tuple[list[Node], list[BadEntry]]:
    """The entries that can be read, and one `BadEntry` for each that cannot.

    For `restore` and `check`, which go on past a bad entry; raises IntegrityError when the tree
    itself cannot be read.
    """
    try:
        document = fields.mapping(fields.load_json(data), "tree")
        fields.version(document, TREE_VERSION, "tree")
        entries = fields.array(document["entries"], "entries")
    except (ValueError, KeyError) as error:
        raise IntegrityError(f"tree {tree_id[:12]} cannot be read: {fields.reason(error)}") from error
    nodes, bad = [], []
    for position, entry in enumerate(entries):
        try:
            nodes.append(_node_from_json(entry))
        except (ValueError, KeyError) as error:
            bad.append(_bad_entry(tree_id, position, entry, error))
    return nodes, bad


def decode_tree(data: bytes, tree_id: str = "") -> list[Node]:
    """Every entry of a tree, or IntegrityError (naming the first bad entry) when one cannot be read."""
    nodes, bad = read_tree(data, tree_id)
    if bad:
        more = f" (and {len(bad) - 1} more bad entries)" if len(bad) > 1 else ""
        raise IntegrityError(bad[0].message + more)
    return nodes


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


_SUMMARY_FLOATS = {name for name, spec in Summary.__dataclass_fields__.items() if isinstance(spec.default, float)}


def _summary_from_json(value: object) -> Summary:
    """Known counts only (a newer writer may add some); informative, so any count in int64 goes."""
    document = fields.mapping(value, "summary")
    counts: dict[str, Any] = {}
    for key in Summary.__dataclass_fields__:
        if key in document:
            what = f"summary.{key}"
            if key in _SUMMARY_FLOATS:
                counts[key] = fields.number(document[key], what, 0, fields.INT64_MAX)
            else:
                counts[key] = fields.integer(document[key], what, -fields.INT64_MAX, fields.INT64_MAX)
    return Summary(**counts)


def _incomplete_from_json(value: object) -> Incomplete:
    marks = fields.mapping(value, "incomplete")
    return Incomplete(*(tuple(fields.path_text(path, f"incomplete.{key}")
                              for path in fields.array(marks.get(key, []), f"incomplete.{key}"))
                        for key in ("sources", "kept_previous")))


def decode_snapshot(snapshot_id: str, data: bytes) -> Snapshot:
    """A snapshot document, every field checked; IntegrityError naming the snapshot otherwise."""
    try:
        document = fields.mapping(fields.load_json(data), "snapshot")
        fields.version(document, SNAPSHOT_VERSION, "snapshot")
        parent = document.get("parent")
        sources = fields.array(document["sources"], "sources")
        return Snapshot(
            id=snapshot_id,
            time=fields.utc_time(document["time"], "time"),
            host=fields.text(document["host"], "host"),
            sources=tuple(fields.path_text(source, "sources") for source in sources),
            tree=fields.hex_id(document["tree"], "tree"),
            parent=None if parent is None else fields.snapshot_id(parent, "parent"),
            summary=_summary_from_json(document.get("summary", {})),
            incomplete=_incomplete_from_json(document.get("incomplete", {})),
        )
    except (ValueError, KeyError) as error:
        raise IntegrityError(f"snapshot {snapshot_id} cannot be read: {fields.reason(error)}") from error
