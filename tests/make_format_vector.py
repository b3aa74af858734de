"""Print docs/FORMAT.md's test vector of format 2 (the ```vector block), made with watcher's own code.

Deterministic: the master keys and the repository id are fixed, and every salt is the SHA-256 of a
label (the code draws salts from os.urandom, so it is replaced here). tests/unit/test_format_vector.py
checks the block; this script only makes it again after a change of the format:

    .venv/bin/python tests/make_format_vector.py
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
from datetime import UTC, datetime
from unittest import mock

from watcher import crypto
from watcher.pack import EncryptedCodec, PackBuilder, blob_associated
from watcher.repository import ENCRYPTION, FORMAT_ENCRYPTED, ChunkerParams, RepoConfig
from watcher.snapshot import Node, Snapshot, Summary, decode_tree, encode_tree

REPOSITORY_ID = "7761746368657220746573742076320a"
MASTER = crypto.MasterKey(bytes.fromhex("3d265c3ff0b3b67b687bccdc66aa1e429962cd70808223417980d50d92a5295c"),
                          bytes.fromhex("d67839e59f14c1027aae9982afaa4f51807aaf08befb38368c923218149ebe46"))
PASSWORDS = (unicodedata.normalize("NFC", "Grüße, café"), "correct horse battery staple")
PARAMS = crypto.KdfParams(1024, 8, 1)
CREATED = "2026-11-30T20:00:00+00:00"
SNAPSHOT_ID = "20261130T200000Z-0a1b2c3d"
HELLO = " ".join(["Hello from watcher, format 2!"] * 8).encode()
TINY = b"tiny"
MTIME_NS = 1764532800000000000  # 2026-11-30T20:00:00Z


def salts():
    """os.urandom for the code: SHA-256("watcher test vector salt <n>"), n = 1, 2, ..."""
    count = 0

    def urandom(size: int) -> bytes:
        nonlocal count
        count += 1
        assert size == crypto.SALT_SIZE
        return hashlib.sha256(f"watcher test vector salt {count}".encode()).digest()

    return urandom


def wrap(text: str, width: int = 100) -> list[str]:
    """A long base64 value as continuation lines (two spaces, then at most `width` characters)."""
    return [f"  {text[i:i + width]}" for i in range(0, len(text), width)]


def sealed_steps(label: str, key: bytes, sealed: bytes, associated: bytes, plaintext: str) -> list[str]:
    """The steps from a sealed object to its plaintext, each as a line of the vector."""
    salt = sealed[:crypto.SALT_SIZE]
    return [f"{label} salt (hex): {salt.hex()}",
            f"{label} object key (hex): {crypto.hkdf(key, salt).hex()}",
            f"{label} AD: {associated.decode()}",
            f"{label} plaintext {plaintext}"]


def main() -> None:
    urandom = salts()
    codec = EncryptedCodec(MASTER)
    codec.workers = 1  # one thread: the salts are drawn in order
    lines = [f"repository id: {REPOSITORY_ID}",
             f"master encryption key (hex): {MASTER.encryption.hex()}",
             f"master MAC key (hex): {MASTER.mac.hex()}",
             ""]

    # config: its mac, and the chunker seed
    config = RepoConfig(REPOSITORY_ID, ChunkerParams(), 1 << 24, "zstd", ENCRYPTION, FORMAT_ENCRYPTED)
    config_input = b"watcher-v2 config " + config.authenticated()
    document = {**json.loads(config.authenticated()), "created": CREATED,
                "mac": MASTER.config_mac(config.authenticated())}
    seed_mac = hmac.digest(MASTER.mac, b"watcher-v2 chunker seed", "sha256")
    lines += [f"config: {json.dumps(document, sort_keys=True, separators=(',', ':'))}",
              f"config mac input: {config_input.decode()}",
              f"config mac: {document['mac']}",
              f"chunker seed HMAC (hex): {seed_mac.hex()}",
              f"chunker seed: {MASTER.chunker_seed()}",
              ""]

    # key files: one per password
    with mock.patch.object(crypto.os, "urandom", urandom):
        for number, password in enumerate(PASSWORDS, 1):
            made = json.loads(crypto.wrap_key(MASTER, REPOSITORY_ID, password, PARAMS))
            made.update(created=CREATED, host="example")
            data = json.dumps(made, separators=(",", ":")).encode()
            key = crypto.decode_key_file(hashlib.sha256(data).hexdigest(), data)
            wrapping = PARAMS.derive(password, key.salt)
            lines += [f"password {number}: {password}",
                      f"password {number} as UTF-8 (hex): {password.encode().hex()}",
                      f"key {number} file: keys/{key.id}",
                      f"key {number} bytes: {data.decode()}",
                      f"key {number} wrapping key (hex): {wrapping.hex()}",
                      *sealed_steps(f"key {number} data", wrapping, key.wrapped, crypto.key_associated(REPOSITORY_ID),
                                    f"(hex): {(MASTER.encryption + MASTER.mac).hex()}"),
                      ""]

        # the pack: two data blobs and the two trees above them
        hello, tiny = MASTER.blob_id(HELLO), MASTER.blob_id(TINY)
        files = encode_tree([Node("hello.txt", "file", 0o644, MTIME_NS, 1000, 1000, len(HELLO), (hello,)),
                             Node("tiny.txt", "file", 0o600, MTIME_NS, 1000, 1000, len(TINY), (tiny,))])
        folder = MASTER.blob_id(files)
        root = encode_tree([Node("vector", "dir", 0o755, MTIME_NS, 1000, 1000, subtree=folder)])
        contents = {hello: ("data", HELLO), tiny: ("data", TINY), folder: ("tree", files),
                    MASTER.blob_id(root): ("tree", root)}
        builder = PackBuilder(codec)
        for blob_id, (kind, content) in contents.items():
            builder.add_plain(blob_id, kind, content)
        pack_id, pack, entries = builder.finish()
        header_start = entries[-1].offset + entries[-1].length
        header = pack[header_start:-12]
        lines += [f"pack file: packs/{pack_id[:2]}/{pack_id}",
                  "pack (base64):", *wrap(base64.b64encode(pack).decode()),
                  f"pack header: at {header_start} length {len(header)}",
                  *sealed_steps("pack header", MASTER.encryption, header, b"watcher-v2 pack header",
                                f"(JSON): {codec.unseal('pack header', '', header, 'header').decode()}")]
        for number, entry in enumerate(entries, 1):
            kind, content = contents[entry.id]
            stored = pack[entry.offset:entry.offset + entry.length]
            plain = crypto.unseal(MASTER.encryption, stored, blob_associated(kind, entry.encoding, entry.id), "blob")
            shown = "(text)" if kind == "data" else "(JSON)"
            if kind == "tree":
                assert encode_tree(decode_tree(content)) == content
            lines += ["",
                      f"blob {number}: {entry.id} {kind} {entry.encoding} at {entry.offset} length {entry.length}",
                      f"blob {number} content {shown}: {content.decode()}",
                      f"blob {number} id = HMAC-SHA256(master MAC key, content): {MASTER.blob_id(content)}",
                      *sealed_steps(f"blob {number}", MASTER.encryption, stored,
                                    blob_associated(kind, entry.encoding, entry.id),
                                    f"(hex, {entry.encoding}): {plain.hex()}")]

        # the index naming the pack, and the snapshot
        index_json = json.dumps({"version": 2, "packs": [{"id": pack_id, "size": len(pack),
                                                          "blobs": [e.as_row() for e in entries]}]},
                                separators=(",", ":"))
        index = codec.seal("index", "", index_json.encode())
        snapshot = Snapshot(SNAPSHOT_ID, datetime(2026, 11, 30, 20, 0, tzinfo=UTC), "example", ("/vector",),
                            MASTER.blob_id(root), None, Summary(files=2, dirs=1, bytes=len(HELLO) + len(TINY), new=2))
        snapshot_json = json.dumps({"version": 1, "time": "2026-11-30T20:00:00Z", "host": snapshot.host,
                                    "sources": list(snapshot.sources), "tree": snapshot.tree, "parent": None,
                                    "summary": vars(snapshot.summary)}, sort_keys=True, separators=(",", ":"))
        sealed_snapshot = codec.seal("snapshot", SNAPSHOT_ID, snapshot_json.encode())
    lines += ["",
              f"index file: index/{hashlib.sha256(index).hexdigest()}",
              "index (base64):", *wrap(base64.b64encode(index).decode()),
              *sealed_steps("index", MASTER.encryption, index, b"watcher-v2 index", f"(JSON): {index_json}"),
              "",
              f"snapshot file: snapshots/{SNAPSHOT_ID}",
              "snapshot (base64):", *wrap(base64.b64encode(sealed_snapshot).decode()),
              *sealed_steps("snapshot", MASTER.encryption, sealed_snapshot,
                            f"watcher-v2 snapshot {SNAPSHOT_ID}".encode(), f"(JSON): {snapshot_json}")]
    print("```vector")
    print("\n".join(lines))
    print("```")


if __name__ == "__main__":
    main()
