"""Packs: many blobs in one stored object, self-describing (pure: no I/O).

Thousands of small files must not cost thousands of uploads, so blobs (file chunks and
trees) are appended to a pack of about `PACK_TARGET` bytes, uploaded once. The pack ends with
its own header, so the index can always be rebuilt from the packs alone:

    blob bytes ... | header (JSON, UTF-8) | header length (u32 LE) | MAGIC (8 bytes)
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

from watcher import fields
from watcher.errors import IntegrityError

MAGIC = b"WPACK001"
TRAILER = struct.Struct("<I8s")
PACK_TARGET = 16 * 1024 * 1024
HEADER_VERSION = 1
ENCODINGS = ("raw", "zlib")
BLOB_TYPES = ("data", "tree")
# The most bytes a stored blob may inflate to: a data chunk is at most the chunker's largest
# (2^24 at most, see RepoConfig), a tree is one folder's listing (about 200 bytes an entry, so this
# is some five million entries). A few MB of hostile zlib must not become unbounded memory. (No
# ratio to the stored size: a legitimate tree of symlinks to one long path deflates 300 to 1.)
INFLATED_LIMIT = {"data": 1 << 24, "tree": 1 << 30}
INFLATE_STEP = 1 << 24


@dataclass(frozen=True)
class BlobEntry:
    """Where a blob lives: `length` stored bytes at `offset` of pack `pack`."""

    id: str
    type: str
    encoding: str
    offset: int
    length: int
    pack: str = ""

    def as_row(self) -> list[object]:
        return [self.id, self.type, self.encoding, self.offset, self.length]

    @classmethod
    def from_row(cls, row: object, pack: str) -> BlobEntry:
        """A row of a pack header or an index, every field checked (FieldError otherwise)."""
        blob_id, blob_type, encoding, offset, length = fields.array(row, "blob row", 5)
        return cls(fields.hex_id(blob_id, "blob id"), fields.choice(blob_type, "blob type", BLOB_TYPES),
                   fields.choice(encoding, "encoding", ENCODINGS), fields.integer(offset, "offset"),
                   fields.integer(length, "length"), pack)


def encode_blob(data: bytes | memoryview, encoding: str) -> bytes:
    return zlib.compress(data, 6) if encoding == "zlib" else bytes(data)


def decode_blob(stored: bytes | memoryview, entry: BlobEntry) -> bytes | memoryview:
    """The blob's content, verified against its id: every byte read back is checked."""
    data = _inflate(stored, entry) if entry.encoding == "zlib" else stored
    if hashlib.sha256(data).hexdigest() != entry.id:
        raise IntegrityError(f"blob {entry.id[:12]} in pack {entry.pack[:12]} does not match its hash")
    return data


def _inflate(stored: bytes | memoryview, entry: BlobEntry) -> bytes:
    """Inflate in steps into one buffer, so memory never goes much past the limit on the way."""
    limit = INFLATED_LIMIT[entry.type]
    where = f"blob {entry.id[:12]} in pack {entry.pack[:12]}"
    inflater = zlib.decompressobj()
    data = bytearray()
    pending = stored
    try:
        while not inflater.eof and len(data) <= limit:
            piece = inflater.decompress(pending, INFLATE_STEP)
            pending = inflater.unconsumed_tail
            data += piece
            if not piece and not pending:
                break  # no input left and nothing more comes out: the stream is cut short
    except zlib.error as error:
        raise IntegrityError(f"{where} is corrupt: {error}") from error
    if len(data) > limit:
        raise IntegrityError(f"{where} inflates to more than the {limit} bytes a {entry.type} blob may hold")
    if not inflater.eof:
        raise IntegrityError(f"{where} is corrupt: its compressed stream is cut short")
    return bytes(data)


class PackBuilder:
    """Accumulates encoded blobs; `finish()` returns the pack's bytes and its entries."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.entries: list[BlobEntry] = []

    def __len__(self) -> int:
        return len(self.buffer)

    def add(self, blob_id: str, blob_type: str, encoding: str, stored: bytes) -> None:
        self.entries.append(BlobEntry(blob_id, blob_type, encoding, len(self.buffer), len(stored)))
        self.buffer += stored

    def finish(self) -> tuple[str, bytes, list[BlobEntry]]:
        rows = [entry.as_row() for entry in self.entries]
        header = json.dumps({"version": HEADER_VERSION, "blobs": rows}, separators=(",", ":"))
        encoded = header.encode()
        self.buffer += encoded + TRAILER.pack(len(encoded), MAGIC)
        data = bytes(self.buffer)
        self.buffer = bytearray()  # the copy above is what is uploaded: free the builder's one now
        pack_id = hashlib.sha256(data).hexdigest()
        entries = [BlobEntry(e.id, e.type, e.encoding, e.offset, e.length, pack_id) for e in self.entries]
        return pack_id, data, entries


def parse_header(pack_id: str, data: bytes) -> list[BlobEntry]:
    """Read the header at the end of a whole pack and check it describes the pack."""
    try:
        if len(data) < TRAILER.size:
            raise ValueError("too short")
        length, magic = TRAILER.unpack(data[-TRAILER.size :])
        if magic != MAGIC:
            raise ValueError("bad magic")
        start = len(data) - TRAILER.size - length
        if start < 0:
            raise ValueError("header longer than the pack")
        document = fields.mapping(fields.load_json(data[start : len(data) - TRAILER.size]), "header")
        fields.version(document, HEADER_VERSION, "pack header")
        entries = [BlobEntry.from_row(row, pack_id) for row in fields.array(document["blobs"], "blobs")]
    except (ValueError, KeyError, struct.error) as error:
        raise IntegrityError(f"pack {pack_id[:12]} has an unreadable header: {fields.reason(error)}") from error
    for entry in entries:
        if entry.offset < 0 or entry.offset + entry.length > start:
            raise IntegrityError(f"pack {pack_id[:12]} header points outside its data")
    return entries
