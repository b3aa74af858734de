"""`forget`: apply the retention policy, then remove the data no remaining snapshot needs.

Every step that removes something first confirms this process's lock lease (`locks.Lease`): once
the lock has gone unrefreshed long enough that another host may have taken it for stale, a backup
may be running that this `forget` cannot see, so it stops (transient) and the next one starts afresh.

Packs of which a large part is no longer needed are repacked: their needed blobs are copied
into new packs. The order keeps the repository sound at every instant: forgotten snapshot files
go first; new packs are uploaded and indexed; then one index naming only the packs that stay is
written, the old index files go, and only then the packs no snapshot needs. A crash between
steps leaves at worst packs that no index names, which the next `forget` removes. Temporary
files of uploads that were killed (never renamed onto their key) go too, once surely abandoned.

A snapshot that cannot be read (a newer watcher's format, damage) may need any pack: while one is
in the repository, no pack is deleted or repacked. Forgetting readable snapshots is still safe (it
removes only their own small files), so the policy is applied to them and the pruning is refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from watcher.config import Retention
from watcher.errors import NotFoundError, WatcherError
from watcher.locks import locked
from watcher.pack import BlobEntry
from watcher.repository import Repository, pack_key
from watcher.retention import Decision, decide

log = logging.getLogger(__name__)

# A pack is repacked when at least this share of its bytes is no longer needed.
REPACK_UNUSED_SHARE = 0.2
# A temporary upload file untouched this long is left by a killed upload, never one in progress:
# an upload writes to it all along (a pack takes seconds to minutes; a stalled connection is
# dropped within minutes), and a day covers the server's clock and ours being hours apart.
TEMPORARY_SAFE_SECONDS = 24 * 3600
# Looking for them walks every folder of the target again (on SFTP, a 12-pack repository's forget
# took 18 -> 30 ms; 257 folders over a slow link take seconds): a daemon, which applies retention
# after each run, looks at most this often.
TEMPORARY_SWEEP_SECONDS = 6 * 3600


@dataclass
class ForgetResult:
    decisions: list[Decision]
    dry_run: bool
    removed_snapshots: int = 0
    deleted_packs: int = 0
    repacked_packs: int = 0
    freed_bytes: int = 0
    kept_packs: int = 0
    unreadable: list[str] = field(default_factory=list)
    removed_temporaries: int = 0

    @property
    def not_pruned(self) -> str | None:
        """Why no data was removed, when snapshots that cannot be read kept it."""
        if not self.unreadable:
            return None
        named = ", ".join(self.unreadable[:3]) + (", ..." if len(self.unreadable) > 3 else "")
        return (f"data not pruned: {len(self.unreadable)} snapshots cannot be read ({named}) and may need "
                "any pack; upgrade watcher or remove them, then run forget again")


def used_blobs(repository: Repository, tree_ids: list[str]) -> set[str]:
    """Every tree and chunk reachable from the given root trees (each tree visited once)."""
    used: set[str] = set()
    stack = list(tree_ids)
    while stack:
        tree_id = stack.pop()
        if tree_id in used:
            continue
        used.add(tree_id)
        for node in repository.load_tree(tree_id):
            used.update(node.content)
            if node.subtree:
                stack.append(node.subtree)
    return used


def _owners(repository: Repository, used: set[str], stored: dict[str, int]) -> dict[str, str]:
    """For each needed blob, the one stored pack that keeps it.

    Hosts backing up the same new content at the same time each upload it (a backup sees only the
    index as it was when it started), so a blob may sit in several packs. One copy is enough: the
    pack that holds the most needed bytes keeps it (so whole packs stay whole), the others count it
    as unneeded. Only packs that are listed count: an index entry for a pack that is gone keeps nothing.
    """
    def needed(pack: str) -> int:
        return sum(entry.length for entry in repository.pack_blobs.get(pack, ()) if entry.id in used)

    owners: dict[str, str] = {}
    for pack in sorted(stored, key=lambda pack: (-needed(pack), pack)):
        for entry in repository.pack_blobs.get(pack, ()):
            if entry.id in used:
                owners.setdefault(entry.id, pack)
    return owners


def _plan(repository: Repository, owners: dict[str, str], stored: dict[str, int]) -> tuple[set[str], set[str]]:
    """(packs to delete outright, packs to repack): a pack that keeps nothing goes, one with a large
    unneeded share or any second copy of a blob is repacked (copies are rare: concurrent backups)."""
    doomed, repack = set(), set()
    for pack in stored:
        entries = repository.pack_blobs.get(pack, [])
        needed = sum(entry.length for entry in entries if owners.get(entry.id) == pack)
        total = sum(entry.length for entry in entries)
        copies = any(entry.id in owners and owners[entry.id] != pack for entry in entries)
        if needed == 0:
            doomed.add(pack)
        elif copies or total - needed >= REPACK_UNUSED_SHARE * total:
            repack.add(pack)
    return doomed, repack


def _repack(repository: Repository, packs: set[str], owners: dict[str, str]) -> set[str]:
    """Copy the blobs that `packs` keep (`owners`) into new packs; return their ids."""
    writer = repository.writer()
    try:
        for pack in sorted(packs):
            data = repository.read_pack(pack)
            for entry in repository.pack_blobs[pack]:
                if owners.get(entry.id) == pack:
                    owners[entry.id] = ""  # copied: a second row of it in this pack is not copied again
                    stored = data[entry.offset : entry.offset + entry.length]
                    repository.codec.decode(stored, entry)  # never copy a damaged blob silently
                    writer.add_stored(entry.id, entry.type, entry.encoding, stored)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return writer.written_packs


def remove_old_temporaries(repository: Repository, dry_run: bool) -> int:
    """Remove (or with `dry_run` count) temporary upload files older than TEMPORARY_SAFE_SECONDS."""
    swept = repository.temporaries_swept
    if swept is not None and time.monotonic() - swept < TEMPORARY_SWEEP_SECONDS:
        return 0
    now = time.time()
    old = [info.name for info in repository.backend.list_temporary()
           if info.mtime is not None and now - info.mtime > TEMPORARY_SAFE_SECONDS]  # no time: kept
    if not dry_run:
        repository.temporaries_swept = time.monotonic()  # once listed: a failed listing is tried next time
    if dry_run:
        return len(old)
    removed = 0
    for name in old:
        try:
            repository.backend.delete_temporary(name)
            removed += 1
        except NotFoundError:
            pass  # removed by another process meanwhile
        except WatcherError as error:
            log.warning("cannot remove the left-over temporary file %s: %s", name, error)
    if removed:
        log.info("removed %d left-over temporary upload files (untouched for more than %d hours)", removed,
                 TEMPORARY_SAFE_SECONDS // 3600)
    return removed


def _forget_snapshots(repository: Repository, decisions: list[Decision]) -> None:
    for decision in decisions:
        if not decision.keep:
            repository.backend.delete(f"snapshots/{decision.snapshot.id}")
            log.info("forgot snapshot %s", decision.snapshot.id)


def run_forget(repository: Repository, policy: Retention, dry_run: bool = False,
               protected: frozenset[str] = frozenset()) -> ForgetResult:
    """Forget what the policy does not keep, then prune; with `dry_run`, only say what would go.

    `protected`: the snapshots the calling run just saved, kept whatever their time says.
    """
    with locked(repository, exclusive=not dry_run) as lease:
        repository.load_index()  # under the lock: packs indexed by a backup that ended meanwhile are needed
        decisions = decide(repository.list_snapshots(), policy, protected=protected)
        result = ForgetResult(decisions, dry_run, unreadable=sorted(repository.unreadable))
        kept = [decision.snapshot for decision in decisions if decision.keep]
        result.removed_snapshots = len(decisions) - len(kept)
        result.removed_temporaries = remove_old_temporaries(repository, dry_run)  # safe whatever snapshots say
        if result.unreadable:
            if not dry_run:
                _forget_snapshots(repository, decisions)
            return result
        used = used_blobs(repository, [snapshot.tree for snapshot in kept])
        stored = repository.listed("packs")
        owners = _owners(repository, used, stored)
        doomed, repack = _plan(repository, owners, stored)
        result.deleted_packs, result.repacked_packs = len(doomed), len(repack)
        result.freed_bytes = sum(stored[pack] for pack in doomed) + sum(
            stored[pack] - sum(e.length for e in repository.pack_blobs[pack] if owners.get(e.id) == pack)
            for pack in repack)
        result.kept_packs = len(stored) - len(doomed) - len(repack)
        if dry_run:
            return result
        lease.confirm()
        _forget_snapshots(repository, decisions)
        if not doomed and not repack:
            return result
        old_indexes = set(repository.indexes)
        new_packs = _repack(repository, repack, owners)
        gone = (doomed | repack) - new_packs  # a new pack may be byte for byte an old one: same id
        survivors: list[tuple[str, int, list[BlobEntry]]] = [
            (pack, repository.packs[pack], entries)
            for pack, entries in sorted(repository.pack_blobs.items()) if pack not in gone
        ]
        written = repository.commit_index(survivors) if survivors else set()
        # A new index may have the very id of an old one (same content): never delete that one.
        for index_id in sorted((old_indexes | set(repository.indexes)) - written):
            lease.confirm()
            repository.backend.delete(f"index/{index_id}")
        for pack in sorted(gone):
            lease.confirm()  # each time: no deletion once our lock may have been taken for stale
            repository.backend.delete(pack_key(pack))
        log.info("removed %d packs, repacked %d into %d, about %d bytes freed", len(doomed), len(repack),
                 len(new_packs), result.freed_bytes)
        return result
