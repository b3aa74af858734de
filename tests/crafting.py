"""Writing crafted objects into a real `file://` repository, as a hostile or broken server would hold them.

Each helper writes a whole, well-hashed object (a tree blob in a new pack with its index, a
snapshot, an index, a pack, the config, a lock) whose JSON says what the test wants, so the
reader meets exactly one bad value and nothing else wrong.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from watcher.backends.local import LocalBackend
from watcher.pack import MAGIC, TRAILER
from watcher.repository import Repository, pack_key
from watcher.snapshot import new_snapshot_id

Change = Callable[[Any], Any]


def dumps(document: object) -> bytes:
    """JSON as a writer that means harm may spell it: infinity as `1e999`."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).replace("Infinity", "1e999").encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Crafter:
    """A repository opened directly on its folder, to plant objects beside the real ones."""

    def __init__(self, repo: Path) -> None:
        self.backend = LocalBackend(repo)
        self.repository = Repository(self.backend, None)
        self.repository.open()
        self.repository.load_index()

    def close(self) -> None:
        self.repository.close()

    def snapshot_document(self, snapshot_id: str) -> dict[str, Any]:
        return json.loads(self.backend.get_bytes(f"snapshots/{snapshot_id}"))

    def add_snapshot(self, document: dict[str, Any], based_on: str) -> str:
        """A new snapshot, a minute after `based_on`, so that it is the newest of its host and sources."""
        moment = datetime.fromisoformat(self.snapshot_document(based_on)["time"]) + timedelta(minutes=1)
        snapshot_id = new_snapshot_id(moment)
        self.backend.put_bytes(f"snapshots/{snapshot_id}", dumps(document))
        return snapshot_id

    def tree_with(self, root: str, path: list[str], change: Change) -> str:
        """A copy of tree `root` where the folder at `path` went through `change` (its JSON document)."""
        writer = self.repository.writer()

        def rewrite(tree_id: str, parts: list[str]) -> str:
            document = json.loads(self.repository.read_blob(tree_id))
            if parts:
                entry = next(entry for entry in document["entries"] if entry["name"] == parts[0])
                entry["subtree"] = rewrite(entry["subtree"], parts[1:])
            else:
                change(document)
            data = dumps(document)
            writer.add(digest(data), "tree", data)
            return digest(data)

        try:
            new_root = rewrite(root, path)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        return new_root

    def add_index(self, document: dict[str, Any]) -> str:
        data = dumps(document)
        self.backend.put_bytes(f"index/{digest(data)}", data)
        return digest(data)

    def add_pack(self, header: dict[str, Any], body: bytes) -> str:
        """A pack whose header is `header`, named by a sound index row covering all of `body`."""
        encoded = json.dumps(header).replace("Infinity", "1e999").encode()
        data = body + encoded + TRAILER.pack(len(encoded), MAGIC)
        pack_id = digest(data)
        self.backend.put_bytes(pack_key(pack_id), data)
        self.add_index({"version": 1, "packs": [
            {"id": pack_id, "size": len(data), "blobs": [[digest(body), "data", "raw", 0, len(body)]]}]})
        return pack_id

    def replace_config(self, change: Change) -> None:
        document = json.loads(self.backend.get_bytes("config"))
        self.backend.put_bytes("config", dumps(change(document)))

    def add_lock(self, document: object) -> None:
        self.backend.put_bytes("locks/crafted-1-0123abcd", dumps(document))

