"""Verify a repository: its structure always, and with `read_data` every stored byte.

Structure: every index parses, every pack an index names exists with the right size, every
snapshot parses and every tree and chunk it reaches is in the index. Data: every pack is
downloaded, its hash checked, its header compared with the index and every blob re-hashed.
Packs that no index names (left by an interrupted run) are not damage; they are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from watcher.errors import IntegrityError, NotFoundError
from watcher.pack import parse_header
from watcher.repository import INDEX_LIMIT, Repository, count_entries, expansion_problem
from watcher.snapshot import digest, read_tree

log = logging.getLogger(__name__)


@dataclass
class CheckResult:
    snapshots: int = 0
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0
    unindexed_packs: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not self.problems


def _check_packs(repository: Repository, result: CheckResult) -> set[str]:
    stored = repository.listed("packs")
    for pack_id, size in sorted(repository.packs.items()):
        if pack_id not in stored:
            result.problems.append(f"pack {pack_id} is missing")
        elif stored[pack_id] != size:
            result.problems.append(f"pack {pack_id} has {stored[pack_id]} bytes, the index says {size}")
    for _pack, entries in sorted(repository.pack_blobs.items()):
        try:
            for entry in entries:
                repository.placed(entry)
        except IntegrityError as error:  # one line per pack is enough
            result.problems.append(str(error))
    result.unindexed_packs = len(stored.keys() - repository.packs.keys())
    result.packs = len(stored)
    return set(stored) & set(repository.packs)


def _check_trees(repository: Repository, result: CheckResult) -> None:
    """Every tree reachable from a snapshot, each distinct one read once (iteratively: any depth);
    then whether each snapshot's trees expand to no more entries than it may hold."""
    shape: dict[str, tuple[int, list[str]]] = {}  # tree id -> (entries, its folders' trees)

    def visit(root: str, where: str) -> None:
        pending = [(root, where)]
        while pending:
            tree_id, where = pending.pop()
            if tree_id in shape:
                continue
            shape[tree_id] = (0, [])
            if not repository.has_blob(tree_id):
                result.problems.append(f"{where}: tree {tree_id} is in no index")
                continue
            try:
                nodes, bad = read_tree(repository.read_blob(tree_id), tree_id)
            except (IntegrityError, NotFoundError) as error:
                result.problems.append(f"{where}: {error}")
                continue
            result.problems.extend(f"{where}: {entry.message}" for entry in bad)
            subtrees = []
            for node in nodes:
                path = f"{where.rstrip('/')}/{node.name}"
                if node.kind == "dir":
                    if node.subtree:
                        subtrees.append(node.subtree)
                        pending.append((node.subtree, path))
                    else:
                        result.problems.append(f"{path}: folder without a tree")
                for chunk in node.content:
                    if not repository.has_blob(chunk):
                        result.problems.append(f"{path}: chunk {chunk} is in no index")
            shape[tree_id] = (len(nodes), subtrees)

    counts: dict[str, int] = {}
    for snapshot_id in repository.snapshot_ids():
        try:
            snapshot = repository.load_snapshot(snapshot_id)
        except IntegrityError as error:
            result.problems.append(str(error))
            continue
        result.snapshots += 1
        visit(snapshot.tree, f"snapshot {snapshot.id}: /")
        try:
            problem = expansion_problem(snapshot, count_entries(shape.__getitem__, snapshot.tree, counts))
        except IntegrityError as error:
            problem = f"snapshot {snapshot.id}: {error}"
        if problem:
            result.problems.append(problem)


def _read_data(repository: Repository, packs: set[str], result: CheckResult, advance: Callable[[int], None]) -> None:
    expected: dict[str, dict[str, tuple[int, int]]] = {}
    for entry in repository.blobs.values():
        expected.setdefault(entry.pack, {})[entry.id] = (entry.offset, entry.length)
    for pack_id in sorted(packs):
        try:
            data = repository.read_pack(pack_id)
            entries = parse_header(pack_id, data, repository.codec)
            for entry in entries:
                repository.codec.decode(data[entry.offset : entry.offset + entry.length], entry)
                result.blobs += 1
        except IntegrityError as error:
            result.problems.append(str(error))
            continue
        finally:
            advance(repository.packs.get(pack_id, 0))
        result.bytes_read += len(data)
        in_header = {entry.id: (entry.offset, entry.length) for entry in entries}
        for blob_id, place in expected.get(pack_id, {}).items():
            if in_header.get(blob_id) != place:
                result.problems.append(f"pack {pack_id}: blob {blob_id} is not where the index says")


def run_check(repository: Repository, read_data: bool = False, advance: Callable[[int], None] = lambda n: None
              ) -> CheckResult:
    """Check an opened repository; the index is loaded here, so a broken index is reported."""
    result = CheckResult()
    try:
        repository.load_index()
    except IntegrityError as error:
        result.problems.append(str(error))
        return result
    if repository.codec.encrypted:
        _check_keys(repository, result)
    packs = _check_packs(repository, result)
    _check_trees(repository, result)
    if read_data:
        _check_index_files(repository, result)
        _read_data(repository, packs, result, advance)
    return result


def _check_keys(repository: Repository, result: CheckResult) -> None:
    """Every key file matches its hash and reads (no password is tried: that needs each one's)."""
    for key_id in repository.key_ids():
        try:
            repository.read_key(key_id)
        except (IntegrityError, NotFoundError) as error:
            result.problems.append(str(error))


def _check_index_files(repository: Repository, result: CheckResult) -> None:
    """The index files as the target holds them, not the local cache's copies."""
    for index_id in sorted(repository.indexes):
        try:
            if digest(repository.backend.get_bytes(f"index/{index_id}", INDEX_LIMIT)) != index_id:
                result.problems.append(f"index {index_id[:12]} does not match its hash")
        except NotFoundError:
            result.problems.append(f"index {index_id[:12]} is missing")
