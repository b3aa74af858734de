"""Pure codecs and tables: trees, snapshots, packs, redaction, key validation, errno translation."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import struct
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest

from watcher import pack, snapshot
from watcher.backends import local
from watcher.backends.base import temp_name, validate_key, validate_prefix
from watcher.errors import (
    BackendConfigError,
    BackendError,
    IntegrityError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    StorageFullError,
    TransientError,
)
from watcher.logs import REDACTED, RedactingFilter, redact
from watcher.snapshot import Node, Snapshot, Summary

# -- trees ------------------------------------------------------------------------------------------

NON_UTF8 = os.fsdecode(b"caf\xe9")


def sample_nodes() -> list[Node]:
    return [
        Node("b.txt", "file", 0o644, 1_700_000_000_123_456_789, 1000, 1000, size=11,
             content=("aa" * 32, "bb" * 32)),
        Node("a-dir", "dir", 0o755, 1_700_000_001_000_000_000, subtree="cc" * 32),
        Node("link", "symlink", 0o777, 5, target="../b.txt"),
        Node(NON_UTF8, "file", 0o600, 0, size=0),
        Node("émoji 🎉", "file", 0o640, 7, size=3, content=("dd" * 32,)),
    ]


def test_tree_round_trip():
    nodes = sample_nodes()
    decoded = snapshot.decode_tree(snapshot.encode_tree(nodes))
    assert decoded == sorted(nodes, key=lambda node: node.name)


def test_non_utf8_name_survives_and_maps_back_to_the_same_bytes():
    (node,) = snapshot.decode_tree(snapshot.encode_tree([Node(NON_UTF8, "file", 0o644, 0)]))
    assert node.name == NON_UTF8
    assert os.fsencode(node.name) == b"caf\xe9"


def test_tree_encoding_is_canonical():
    nodes = sample_nodes()
    first = snapshot.encode_tree(nodes)
    assert snapshot.encode_tree(list(reversed(nodes))) == first
    assert snapshot.encode_tree(nodes[2:] + nodes[:2]) == first
    assert snapshot.digest(first) == hashlib.sha256(first).hexdigest()
    assert json.loads(first)["version"] == snapshot.TREE_VERSION


def test_tree_encoding_changes_with_content():
    nodes = sample_nodes()
    changed = [*nodes[:-1], Node("émoji 🎉", "file", 0o640, 8, size=3, content=("dd" * 32,))]
    assert snapshot.encode_tree(nodes) != snapshot.encode_tree(changed)


def tree_with(entry: dict) -> bytes:
    base = {"name": "ok", "type": "file", "mode": 420, "mtime_ns": 0, "uid": 0, "gid": 0, "size": 0, "content": []}
    return json.dumps({"version": 1, "entries": [{**base, **entry}]}).encode()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "x\0y", "../../etc"])
def test_unsafe_names_are_rejected(name):
    with pytest.raises(IntegrityError):
        snapshot.decode_tree(tree_with({"name": name}))
    with pytest.raises(IntegrityError):
        snapshot.decode_tree(snapshot.encode_tree([Node(name, "file", 0o644, 0)]))


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({"version": 2, "entries": []}).encode(),
        json.dumps({"version": "1", "entries": []}).encode(),
        json.dumps({"entries": []}).encode(),
        json.dumps({"version": 1}).encode(),
        json.dumps([1, 2]).encode(),
        b"not json",
        b"\xff\xfe",
        b"",
        tree_with({"type": "fifo"}),
        tree_with({"name": 5}),
        tree_with({"mode": "rwx"}),
        tree_with({"mtime_ns": None}),
    ],
)
def test_unreadable_trees_are_integrity_errors(data):
    with pytest.raises(IntegrityError):
        snapshot.decode_tree(data, "ab" * 32)


# -- snapshots --------------------------------------------------------------------------------------


def sample_snapshot(moment: datetime | None = None) -> Snapshot:
    moment = moment or datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=UTC)
    return Snapshot(
        id=snapshot.new_snapshot_id(moment),
        time=moment,
        host="box",
        sources=("/home/me/documents", NON_UTF8.join(["/srv/", ""])),
        tree="ee" * 32,
        parent="20240101T000000Z-0123abcd",
        summary=Summary(files=3, dirs=2, bytes=100, new=1, changed=1, unchanged=1, removed=4, bytes_read=50,
                        bytes_added=40, warnings=0, duration_seconds=1.5),
    )


def test_snapshot_round_trip():
    original = sample_snapshot()
    decoded = snapshot.decode_snapshot(original.id, snapshot.encode_snapshot(original))
    assert decoded == original
    assert decoded.time.utcoffset() == timedelta(0)


def test_snapshot_in_another_time_zone_is_stored_in_utc():
    moment = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    original = sample_snapshot(moment)
    data = snapshot.encode_snapshot(original)
    assert json.loads(data)["time"].startswith("2024-06-01T10:00:00")
    assert json.loads(data)["time"].endswith("Z")
    decoded = snapshot.decode_snapshot(original.id, data)
    assert decoded.time == moment
    assert decoded.time_text == "2024-06-01T10:00:00Z"


def test_snapshot_without_parent_and_with_unknown_summary_fields():
    original = sample_snapshot()
    document = json.loads(snapshot.encode_snapshot(original))
    document["parent"] = None
    document["summary"]["from_the_future"] = 1
    decoded = snapshot.decode_snapshot("x", json.dumps(document).encode())
    assert decoded.parent is None
    assert decoded.summary == original.summary


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.pop("version"),
        lambda d: d.pop("time"),
        lambda d: d.update(time="yesterday"),
        lambda d: d.pop("tree"),
    ],
)
def test_unreadable_snapshots_are_integrity_errors(mutate):
    document = json.loads(snapshot.encode_snapshot(sample_snapshot()))
    mutate(document)
    with pytest.raises(IntegrityError):
        snapshot.decode_snapshot("x", json.dumps(document).encode())


@pytest.mark.parametrize("data", [b"", b"[]", b"nope", b"\x00\x01"])
def test_garbage_snapshots_are_integrity_errors(data):
    with pytest.raises(IntegrityError):
        snapshot.decode_snapshot("x", data)


def test_new_snapshot_id_format():
    moment = datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)
    first = snapshot.new_snapshot_id(moment)
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", first)
    assert first.startswith("20240102T030405Z-")
    assert snapshot.new_snapshot_id(moment) != first, "never collides"


def test_new_snapshot_id_is_utc():
    moment = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5)))
    assert snapshot.new_snapshot_id(moment).startswith("20240101T220405Z-")


def test_snapshot_ids_sort_by_time():
    early = snapshot.new_snapshot_id(datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC))
    late = snapshot.new_snapshot_id(datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC))
    assert sorted([late, early]) == [early, late]


# -- packs ------------------------------------------------------------------------------------------


def build_pack() -> tuple[str, bytes, list[pack.BlobEntry], dict[str, bytes]]:
    contents = {"data": b"some file content" * 50, "tree": snapshot.encode_tree(sample_nodes()), "empty": b""}
    builder = pack.PackBuilder()
    ids = {}
    for label, data in contents.items():
        blob_id = snapshot.digest(data)
        ids[blob_id] = data
        encoding = "zlib" if label == "tree" else "raw"
        builder.add(blob_id, "tree" if label == "tree" else "data", encoding, pack.encode_blob(data, encoding))
    pack_id, data, entries = builder.finish()
    return pack_id, data, entries, ids


def test_pack_round_trip():
    pack_id, data, entries, ids = build_pack()
    assert pack_id == hashlib.sha256(data).hexdigest()
    assert data.endswith(pack.MAGIC)
    parsed = pack.parse_header(pack_id, data)
    assert parsed == entries
    assert all(entry.pack == pack_id for entry in parsed)
    for entry in parsed:
        stored = data[entry.offset : entry.offset + entry.length]
        assert pack.decode_blob(stored, entry) == ids[entry.id]
    assert {entry.encoding for entry in parsed} == {"raw", "zlib"}


def test_a_pack_streamed_in_pieces_is_the_joined_pack():
    pieces_builder, joined_builder = pack.PackBuilder(), pack.PackBuilder()
    buffer = bytearray(b"reused buffer " * 100)
    for builder in (pieces_builder, joined_builder):
        builder.add_plain(snapshot.digest(bytes(buffer)), "data", memoryview(buffer))
        builder.add_plain(snapshot.digest(b"tree"), "tree", b"tree")
    buffer[:] = bytes(len(buffer))  # the caller reuses its buffer: the builder kept its own bytes
    pack_id, pieces, entries = pieces_builder.finish_pieces()
    joined_id, joined, joined_entries = joined_builder.finish()
    assert (pack_id, b"".join(pieces), entries) == (joined_id, joined, joined_entries)
    assert pack_id == hashlib.sha256(joined).hexdigest()
    stream = pack.PiecesReader(pieces)
    got = b""
    while chunk := stream.read(7):
        got += chunk
    assert got == joined and stream.tell() == len(joined)
    for position in (0, 1, len(pieces[0]), len(joined) - 3, len(joined)):
        stream.seek(position)  # a retry starts over where the upload started
        assert stream.tell() == position and stream.read() == joined[position:]
    with pytest.raises(ValueError):
        stream.seek(len(joined) + 1)


def test_empty_pack_round_trip():
    pack_id, data, entries = pack.PackBuilder().finish()
    assert entries == []
    assert pack.parse_header(pack_id, data) == []


@pytest.mark.parametrize("which", ["raw", "zlib"])
def test_flipped_byte_in_a_blob_is_detected(which):
    _pack_id, data, entries, _ids = build_pack()
    entry = next(entry for entry in entries if entry.encoding == which and entry.length)
    stored = bytearray(data[entry.offset : entry.offset + entry.length])
    stored[len(stored) // 2] ^= 0x40
    with pytest.raises(IntegrityError):
        pack.decode_blob(bytes(stored), entry)


def test_blob_under_the_wrong_id_is_detected():
    entry = pack.BlobEntry("00" * 32, "data", "raw", 0, 5, "ff" * 32)
    with pytest.raises(IntegrityError):
        pack.decode_blob(b"hello", entry)


def trailer(length: int, magic: bytes = pack.MAGIC) -> bytes:
    return pack.TRAILER.pack(length, magic)


def forged(header: object, body: bytes = b"12345") -> bytes:
    encoded = json.dumps(header).encode()
    return body + encoded + trailer(len(encoded))


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda data: data[:-1], id="truncated-by-one"),
        pytest.param(lambda data: data[:-20], id="truncated-more"),
        pytest.param(lambda data: data[:5], id="shorter-than-trailer"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: data[:-8] + b"WPACK999", id="bad-magic"),
        pytest.param(lambda data: data[:-12] + struct.pack("<I", len(data) * 2) + pack.MAGIC, id="header-too-long"),
        pytest.param(lambda data: data[:-12] + struct.pack("<I", 3) + pack.MAGIC, id="header-length-wrong"),
        pytest.param(lambda data: forged({"version": 1, "blobs": [["aa", "data", "raw", 0, 6]]}), id="past-the-data"),
        pytest.param(lambda data: forged({"version": 1, "blobs": [["aa", "data", "raw", 3, 3]]}), id="overlaps-header"),
        pytest.param(lambda data: forged({"version": 1, "blobs": [["aa", "data", "raw", -1, 2]]}),
                     id="negative-offset"),
        pytest.param(lambda data: forged({"version": 1, "blobs": [["aa", "data", "raw", 0, -1]]}),
                     id="negative-length"),
        pytest.param(lambda data: forged({"version": 1, "blobs": [["aa", "exe", "raw", 0, 1]]}), id="unknown-type"),
        pytest.param(lambda data: forged({"version": 1, "blobs": [["aa", "data", "lz4", 0, 1]]}),
                     id="unknown-encoding"),
        pytest.param(lambda data: forged({"version": 1, "blobs": [["aa", "data", "raw", 0]]}), id="short-row"),
        pytest.param(lambda data: forged({"version": 1, "blobs": [7]}), id="row-not-a-list"),
        pytest.param(lambda data: forged({"version": 1}), id="no-blobs"),
        pytest.param(lambda data: forged([]), id="header-a-list"),
        pytest.param(lambda data: b"abc" + b"\xff\xfe" + trailer(2), id="header-not-utf8"),
    ],
)
def test_bad_packs_are_integrity_errors(spoil):
    pack_id, data, _entries, _ids = build_pack()
    with pytest.raises(IntegrityError):
        pack.parse_header(pack_id, spoil(data))


# -- redaction --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("login with hunter2 failed", ["hunter2"], f"login with {REDACTED} failed"),
        ("a hunter2 b hunter2", ["hunter2"], f"a {REDACTED} b {REDACTED}"),
        ("both s3cr3t and pw-long", ["pw", "pw-long", "s3cr3t"], f"both {REDACTED} and {REDACTED}"),
        ("nothing to hide", ["hunter2"], "nothing to hide"),
        ("nothing to hide", ["", ""], "nothing to hide"),
        ("sftp://bob:hunter2@host/srv", [], f"sftp://bob:{REDACTED}@host/srv"),
        ("see ftps://bob:p%40ss@host:21/x now", [], f"see ftps://bob:{REDACTED}@host:21/x now"),
        ("FTP://bob:pw@host/x and sftp://al:other@h2/", [], f"FTP://bob:{REDACTED}@host/x and sftp://al:{REDACTED}@h2/"),
        ("sftp://bob@host:2222/srv", [], "sftp://bob@host:2222/srv"),
        ("sftp://host:2222/srv", [], "sftp://host:2222/srv"),
        ("sftp://:hunter2@host/srv", [], f"sftp://:{REDACTED}@host/srv"),
        ("error: sftp://bob:p@ss@host/x", ["p@ss"], f"error: sftp://bob:{REDACTED}@host/x"),
        # a short secret is masked where it stands alone, not inside words (which would show what it is)
        ("SSH handshake failed (No existing session)", ["sess"], "SSH handshake failed (No existing session)"),
        ("key sess, then (sess) and _sess_", ["sess"], f"key {REDACTED}, then ({REDACTED}) and _{REDACTED}_"),
        # a long one wherever it is; one of 1 to 3 characters is everywhere in text, and never masked
        ("token=abcLongSecret99def", ["LongSecret99"], f"token=abc{REDACTED}def"),
        ("attempt 2 of 5 in 1.5 s", ["s"], "attempt 2 of 5 in 1.5 s"),
    ],
)
def test_redact(text, secrets, expected):
    assert redact(text, secrets) == expected


def test_redacting_filter_cleans_message_args_and_traceback():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("watcher.test_codecs.redaction")
    handler = Keep()
    handler.addFilter(RedactingFilter(["hunter2"]))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("password %s for %s", "hunter2", "ftp://bob:other@host/x")
        try:
            raise RuntimeError("failed with hunter2")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = "\n".join(records)
    assert "hunter2" not in text
    assert "other" not in text
    assert "RuntimeError" in text


# -- keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["config", "packs/ab/abc", "index/" + "0" * 64, "snapshots/20240101T000000Z-0123abcd", "a-b_c.d", "A9"],
)
def test_valid_keys(key):
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "", "/a", "a/", "a//b", "../x", "a/../b", "..", ".", "./a", ".hidden", "a/.b", "x\r\nDELE y", "a b",
        "config\n", "packs/ab\n/c", "a\tb", "a\\b", "-rf", "a/-b", "caf\xe9", "a:b", "a*", "a%2Fb",
        "packs/ab/abc.tmp-0123456789ab",
    ],
)
def test_invalid_keys(key):
    with pytest.raises(BackendConfigError):
        validate_key(key)


@pytest.mark.parametrize("key", ["config", "packs/ab/abc", "snapshots/20240101T000000Z-0123abcd"])
def test_temporary_names_are_never_valid_keys(key):
    temp = temp_name(key)
    assert temp != key
    assert temp.rsplit("/", 1)[0] == key.rsplit("/", 1)[0] or "/" not in key
    with pytest.raises(BackendConfigError):
        validate_key(temp)
    assert temp_name(key) != temp, "two uploads of one key never share a temporary name"


def test_validate_prefix():
    assert validate_prefix("") == ""
    assert validate_prefix("packs/ab") == "packs/ab"
    with pytest.raises(BackendConfigError):
        validate_prefix("packs/")


# -- local backend errno table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.ENOENT, NotFoundError),
        (errno.EACCES, PermissionDeniedError),
        (errno.EPERM, PermissionDeniedError),
        (errno.EROFS, PermissionDeniedError),
        (errno.ENOSPC, StorageFullError),
        (errno.EDQUOT, StorageFullError),
    ],
)
def test_local_translate_known_errors(code, expected):
    error = local.translate(OSError(code, os.strerror(code), "/some/file"), "packs/ab/abc")
    assert type(error) is expected
    assert isinstance(error, PermanentError) and not isinstance(error, TransientError)
    assert "packs/ab/abc" in str(error)


@pytest.mark.parametrize("code", [errno.EIO, errno.EBUSY, errno.ENAMETOOLONG])
def test_local_translate_unknown_errors_stay_unmarked(code):
    error = local.translate(OSError(code, os.strerror(code)), "config")
    assert type(error) is BackendError
    assert not isinstance(error, (PermanentError, TransientError))
    assert "config" in str(error)


def test_a_tree_blob_inflates_whole_and_a_cut_or_oversized_one_is_refused(monkeypatch):
    data = snapshot.encode_tree([Node(f"f{i:06d}", "file", 0o644, 1, size=0) for i in range(20000)])
    stored = zlib.compress(data, 6)
    entry = pack.BlobEntry(snapshot.digest(data), "tree", "zlib", 0, len(stored), "ff" * 32)
    monkeypatch.setattr(pack, "INFLATE_STEP", 4096)  # many steps
    assert bytes(pack.decode_blob(stored, entry)) == data
    with pytest.raises(IntegrityError, match="cut short"):
        pack.decode_blob(stored[: len(stored) // 2], entry)
    monkeypatch.setitem(pack.INFLATED_LIMIT, "tree", len(data) - 1)
    with pytest.raises(IntegrityError, match=f"more than the {len(data) - 1} bytes a tree blob may hold"):
        pack.decode_blob(stored, entry)
