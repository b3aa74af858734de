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
import threading
import zlib
from dataclasses import dataclass

import zstandard

from watcher import crypto, fields
from watcher.errors import IntegrityError

MAGIC = b"WPACK001"
MAGIC_V2 = b"WPACK002"
TRAILER = struct.Struct("<I8s")
PACK_TARGET = 16 * 1024 * 1024
ENCODINGS = ("raw", "zlib")
ENCODINGS_V2 = ("raw", "zstd")
# BACKUP_COMPRESSION -> zstd level (None: store as is). `auto` is zstd's default level: a few hundred
# MB/s a core, most of what the higher levels gain on text; `max` trades much more CPU for a little.
COMPRESSION_LEVELS = {"auto": 3, "max": 19, "off": None}
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
    def from_row(cls, row: object, pack: str, encodings: tuple[str, ...] = ENCODINGS) -> BlobEntry:
        """A row of a pack header or an index, every field checked (FieldError otherwise)."""
        blob_id, blob_type, encoding, offset, length = fields.array(row, "blob row", 5)
        return cls(fields.hex_id(blob_id, "blob id"), fields.choice(blob_type, "blob type", BLOB_TYPES),
                   fields.choice(encoding, "encoding", encodings), fields.integer(offset, "offset"),
                   fields.integer(length, "length"), pack)

    def where(self) -> str:
        return f"blob {self.id[:12]} in pack {self.pack[:12]}"


def encode_blob(data: bytes | memoryview, encoding: str) -> bytes:
    return zlib.compress(data, 6) if encoding == "zlib" else bytes(data)


def decode_blob(stored: bytes | memoryview, entry: BlobEntry, codec: Codec | None = None) -> bytes | memoryview:
    """The blob's content, verified against its id: every byte read back is checked."""
    return (codec or PLAIN).decode(stored, entry)


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


class Codec:
    """Format v1's encodings: blob ids are SHA-256, trees zlib, nothing encrypted."""

    version = 1
    magic = MAGIC
    encodings = ENCODINGS
    encrypted = False

    def blob_id(self, data: bytes | memoryview) -> str:
        return hashlib.sha256(data).hexdigest()

    def encode(self, blob_id: str, blob_type: str, data: bytes | memoryview) -> tuple[str, tuple[bytes, ...]]:
        """A blob's encoding and its stored form, in pieces (joined once, into the pack)."""
        encoding = "zlib" if blob_type == "tree" else "raw"
        return encoding, (encode_blob(data, encoding),)

    def decode(self, stored: bytes | memoryview, entry: BlobEntry) -> bytes | memoryview:
        data = _inflate(stored, entry) if entry.encoding == "zlib" else stored
        if self.blob_id(data) != entry.id:
            raise IntegrityError(f"{entry.where()} does not match its hash")
        return data

    def seal(self, kind: str, name: str, data: bytes) -> bytes:
        """An index file's, a snapshot's or a pack header's stored bytes (`kind`, `name` say which)."""
        return data

    def unseal(self, kind: str, name: str, data: bytes | memoryview, what: str) -> bytes | memoryview:
        return data


PLAIN = Codec()


def associated(kind: str, name: str = "") -> bytes:
    """What a sealed object of format v2 is bound to (docs/FORMAT.md): a swapped object fails."""
    return f"watcher-v2 {kind} {name}".rstrip().encode()


def blob_associated(blob_type: str, encoding: str, blob_id: str) -> bytes:
    return f"watcher-v2 blob {blob_type} {encoding} {blob_id}".encode()


class EncryptedCodec(Codec):
    """Format v2: blob ids are HMAC-SHA256 under the repository's MAC key; every blob (compressed
    with zstd first, unless that does not shrink it), pack header, index file and snapshot is
    sealed (`crypto.seal`); see docs/FORMAT.md."""

    version = 2
    magic = MAGIC_V2
    encodings = ENCODINGS_V2
    encrypted = True

    def __init__(self, master: crypto.MasterKey, compression: str = "auto") -> None:
        self.master = master
        self.level = COMPRESSION_LEVELS[compression]
        self.local = threading.local()  # zstd contexts are not thread-safe

    def blob_id(self, data: bytes | memoryview) -> str:
        return self.master.blob_id(data)

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self.local, "compressor", None)
        if compressor is None:
            compressor = self.local.compressor = zstandard.ZstdCompressor(level=self.level or 3,
                                                                          write_content_size=True)
        return compressor

    def encode(self, blob_id: str, blob_type: str, data: bytes | memoryview) -> tuple[str, tuple[bytes, ...]]:
        plain: bytes | memoryview = data
        encoding = "raw"
        if self.level is not None and len(data):
            packed = self._compressor().compress(data)
            if len(packed) < len(data):
                plain, encoding = packed, "zstd"
        return encoding, crypto.seal_parts(self.master.encryption, plain, blob_associated(blob_type, encoding, blob_id))

    def decode(self, stored: bytes | memoryview, entry: BlobEntry) -> bytes | memoryview:
        where = entry.where()
        plain = crypto.unseal(self.master.encryption, stored, blob_associated(entry.type, entry.encoding, entry.id),
                              where)
        data = _unzstd(plain, entry, self.local) if entry.encoding == "zstd" else plain
        if self.blob_id(data) != entry.id:
            raise IntegrityError(f"{where} does not match its id")
        return data

    def seal(self, kind: str, name: str, data: bytes) -> bytes:
        return crypto.seal(self.master.encryption, data, associated(kind, name))

    def unseal(self, kind: str, name: str, data: bytes | memoryview, what: str) -> bytes:
        return crypto.unseal(self.master.encryption, data, associated(kind, name), what)


def _unzstd(plain: bytes, entry: BlobEntry, local: threading.local) -> bytes:
    """Decompress a zstd frame that declares its size, at most INFLATED_LIMIT[type] bytes: the size
    is read from the frame first, so no more than that is ever allocated."""
    limit = INFLATED_LIMIT[entry.type]
    where = entry.where()
    try:
        size = zstandard.frame_content_size(plain)
        if size < 0:
            raise IntegrityError(f"{where} is corrupt: its zstd frame does not say its size")
        if size > limit:
            raise IntegrityError(f"{where} inflates to more than the {limit} bytes a {entry.type} blob may hold")
        decompressor = getattr(local, "decompressor", None)
        if decompressor is None:
            decompressor = local.decompressor = zstandard.ZstdDecompressor()
        data = decompressor.decompress(plain, max_output_size=limit, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise IntegrityError(f"{where} is corrupt: {error}") from error
    if len(data) != size:
        raise IntegrityError(f"{where} is corrupt: it inflates to {len(data)} bytes, its frame says {size}")
    return data


class PackBuilder:
    """Accumulates blobs in their stored form; `finish_pieces()` returns the pack as pieces, its id
    and its entries, `finish()` the same joined.

    Plain blobs are encoded (compressed, sealed) as they are added, in the caller's thread: the
    builder then never holds a copy of plain content beside the stored one, so a pack costs its
    stored size in memory, once. (A pool encoding whole packs on the upload thread held the plain
    pack, its encoded pieces and the joined pack at once, and its threads mostly waited for the
    GIL: bench/profile.py, issue 10.)"""

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec = codec or PLAIN
        self.items: list[tuple[str, str, str, tuple[bytes, ...]]] = []  # id, type, encoding, stored pieces
        self.size = 0
        self.entries: list[BlobEntry] = []

    def __len__(self) -> int:
        return self.size

    def add(self, blob_id: str, blob_type: str, encoding: str, stored: bytes) -> None:
        """An encoded blob, stored as it is (how `forget` repacks)."""
        self.items.append((blob_id, blob_type, encoding, (stored,)))
        self.size += len(stored)

    def add_plain(self, blob_id: str, blob_type: str, data: bytes | memoryview) -> None:
        """A blob's content, encoded now (`data` may be the caller's buffer, reused after this returns:
        encoding makes new bytes, except format 1's raw blobs, copied)."""
        encoding, pieces = self.codec.encode(blob_id, blob_type, data)
        if not all(type(piece) is bytes for piece in pieces):
            pieces = tuple(bytes(piece) for piece in pieces)
        self.items.append((blob_id, blob_type, encoding, pieces))
        self.size += sum(len(piece) for piece in pieces)

    def finish_pieces(self) -> tuple[str, list[bytes], list[BlobEntry]]:
        """The pack as the list of its pieces (blobs, sealed header, trailer) in order, never joined:
        `PiecesReader` uploads them as one stream; the id is their SHA-256, hashed piece by piece."""
        items, self.items, self.size = self.items, [], 0
        parts: list[bytes] = []
        entries = []
        offset = 0
        for blob_id, blob_type, encoding, pieces in items:
            length = sum(len(piece) for piece in pieces)
            entries.append(BlobEntry(blob_id, blob_type, encoding, offset, length))
            parts.extend(pieces)
            offset += length
        del items
        rows = [entry.as_row() for entry in entries]
        header = json.dumps({"version": self.codec.version, "blobs": rows}, separators=(",", ":")).encode()
        encoded = self.codec.seal("pack header", "", header)
        parts += [encoded, TRAILER.pack(len(encoded), self.codec.magic)]
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        pack_id = digest.hexdigest()
        self.entries = [BlobEntry(e.id, e.type, e.encoding, e.offset, e.length, pack_id) for e in entries]
        return pack_id, parts, self.entries

    def finish(self) -> tuple[str, bytes, list[BlobEntry]]:
        pack_id, parts, entries = self.finish_pieces()
        return pack_id, b"".join(parts), entries


class PiecesReader:
    """A binary stream over a list of bytes, read in order: a pack uploaded without being joined
    into one more copy of itself. `seek` (a retry starting over) and `tell` as a backend needs."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.size = sum(len(piece) for piece in pieces)
        self.index = 0  # the piece the next read starts in
        self.offset = 0  # and where in it
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self.position
        out: list[bytes] = []
        wanted = size
        while wanted > 0 and self.index < len(self.pieces):
            piece = self.pieces[self.index]
            take = min(wanted, len(piece) - self.offset)
            out.append(piece if take == len(piece) else piece[self.offset : self.offset + take])
            self.offset += take
            wanted -= take
            if self.offset == len(piece):
                self.index, self.offset = self.index + 1, 0
        taken = size - wanted
        self.position += taken
        return out[0] if len(out) == 1 else b"".join(out)

    def tell(self) -> int:
        return self.position

    def seek(self, position: int, whence: int = 0) -> int:
        if whence != 0 or not 0 <= position <= self.size:
            raise ValueError("PiecesReader seeks to an absolute position within the stream only")
        self.index, self.offset, self.position = 0, 0, 0
        while self.index < len(self.pieces) and position - self.position >= len(self.pieces[self.index]):
            self.position += len(self.pieces[self.index])
            self.index += 1
        self.offset = position - self.position
        self.position = position
        return position

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


def parse_header(pack_id: str, data: bytes, codec: Codec | None = None) -> list[BlobEntry]:
    """Read the header at the end of a whole pack and check it describes the pack."""
    codec = codec or PLAIN
    try:
        if len(data) < TRAILER.size:
            raise ValueError("too short")
        length, magic = TRAILER.unpack(data[-TRAILER.size :])
        if magic != codec.magic:
            raise ValueError("bad magic")
        start = len(data) - TRAILER.size - length
        if start < 0:
            raise ValueError("header longer than the pack")
        header = codec.unseal("pack header", "", data[start : len(data) - TRAILER.size], "its header")
        document = fields.mapping(fields.load_json(header), "header")
        fields.version(document, codec.version, "pack header")
        entries = [BlobEntry.from_row(row, pack_id, codec.encodings)
                   for row in fields.array(document["blobs"], "blobs")]
    except (ValueError, KeyError, struct.error, IntegrityError) as error:
        raise IntegrityError(f"pack {pack_id[:12]} has an unreadable header: {fields.reason(error)}") from error
    for entry in entries:
        if entry.offset < 0 or entry.offset + entry.length > start:
            raise IntegrityError(f"pack {pack_id[:12]} header points outside its data")
    return entries
