"""docs/FORMAT.md's test vector of format 2, read from the document and checked three ways: each value
against the others (the document is consistent), each step with nothing but the primitives the
document names (a third party can follow it), and each step with watcher's own functions, then the
whole chain through a repository (watcher writes and reads what the document says)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import unicodedata
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from watcher import crypto
from watcher.backends.memory import MemoryBackend
from watcher.pack import EncryptedCodec, parse_header
from watcher.repository import Protection, RepoConfig, Repository, iter_tree
from watcher.snapshot import decode_snapshot, decode_tree, encode_snapshot, encode_tree

FORMAT = Path(__file__).parents[2] / "docs" / "FORMAT.md"
BLOBS = (1, 2, 3, 4)


def vector() -> dict[str, str]:
    """The block as `label: value` pairs; lines starting with two spaces continue the value above."""
    block = re.search(r"```vector\n(.*?)```", FORMAT.read_text(encoding="utf-8"), re.S)
    assert block is not None, "FORMAT.md has no ```vector block"
    found: dict[str, str] = {}
    label = ""
    for line in block.group(1).splitlines():
        if not line:
            continue
        if line.startswith("  "):
            assert label and re.fullmatch(r"[A-Za-z0-9+/=]+", line[2:]), f"a bad continuation line: {line!r}"
            found[label] += line[2:]
            continue
        label, colon, value = line.partition(":")
        assert colon and label not in found and (not value or value.startswith(" ")), f"a bad line: {line!r}"
        found[label] = value[1:]
    return found


def steps(v: dict[str, str], what: str) -> tuple[bytes, bytes, bytes, bytes]:
    """A sealed object's salt, object key, associated data and plaintext, as the vector gives them."""
    plaintext = next(value for label, value in v.items() if label.startswith(f"{what} plaintext"))
    kind = next(label for label in v if label.startswith(f"{what} plaintext"))
    data = bytes.fromhex(plaintext) if "(hex" in kind else plaintext.encode()
    return (bytes.fromhex(v[f"{what} salt (hex)"]), bytes.fromhex(v[f"{what} object key (hex)"]),
            v[f"{what} AD"].encode(), data)


def stored(v: dict[str, str]) -> dict[str, bytes]:
    """Every file of the vector, by its key on the target."""
    files = {v[f"key {n} file"]: v[f"key {n} bytes"].encode() for n in (1, 2)}
    for what in ("pack", "index", "snapshot"):
        files[v[f"{what} file"]] = base64.b64decode(v[f"{what} (base64)"], validate=True)
    files["config"] = v["config"].encode()
    return files


def blob_row(v: dict[str, str], n: int) -> tuple[str, str, str, int, int]:
    blob_id, kind, encoding, at, offset, length_word, length = v[f"blob {n}"].split(" ")
    assert (at, length_word) == ("at", "length")
    return blob_id, kind, encoding, int(offset), int(length)


def blob_content(v: dict[str, str], n: int) -> bytes:
    return next(value for label, value in v.items() if label.startswith(f"blob {n} content")).encode()


def sealed_objects(v: dict[str, str]) -> dict[str, tuple[bytes, bytes]]:
    """Every sealed object of the vector, by its name in the vector: (outer key, sealed bytes)."""
    files = stored(v)
    pack = files[v["pack file"]]
    master = bytes.fromhex(v["master encryption key (hex)"])
    objects = {f"key {n} data": (bytes.fromhex(v[f"key {n} wrapping key (hex)"]),
                                 base64.b64decode(json.loads(v[f"key {n} bytes"])["data"])) for n in (1, 2)}
    start, length = (int(word) for word in v["pack header"].split(" ")[1::2])
    objects["pack header"] = (master, pack[start:start + length])
    for n in BLOBS:
        _, _, _, offset, length = blob_row(v, n)
        objects[f"blob {n}"] = (master, pack[offset:offset + length])
    objects["index"] = (master, files[v["index file"]])
    objects["snapshot"] = (master, files[v["snapshot file"]])
    return objects


def test_the_vector_is_consistent():
    v = vector()
    repository_id = v["repository id"]
    encryption, mac = bytes.fromhex(v["master encryption key (hex)"]), bytes.fromhex(v["master MAC key (hex)"])
    # file names: SHA-256 of the stored bytes (snapshots: a time and a suffix)
    for key, data in stored(v).items():
        if key.startswith(("keys/", "index/")):
            assert key.split("/")[-1] == hashlib.sha256(data).hexdigest(), key
    pack_key = v["pack file"]
    pack = stored(v)[pack_key]
    assert re.fullmatch(r"packs/([0-9a-f]{2})/\1[0-9a-f]{62}", pack_key)
    assert pack_key.split("/")[-1] == hashlib.sha256(pack).hexdigest()
    assert pack.endswith(b"WPACK002")
    start, length = (int(word) for word in v["pack header"].split(" ")[1::2])
    assert int.from_bytes(pack[-12:-8], "little") == length and start + length + 12 == len(pack)
    snapshot_id = v["snapshot file"].removeprefix("snapshots/")
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", snapshot_id)
    # passwords: their UTF-8 bytes as given, one of them not ASCII
    for n in (1, 2):
        assert v[f"password {n}"].encode() == bytes.fromhex(v[f"password {n} as UTF-8 (hex)"])
    assert not v["password 1"].isascii()
    # config: its mac covers the parameters, without `created` and `mac`
    config = json.loads(v["config"])
    assert config["id"] == repository_id and config["version"] == 2 and config["mac"] == v["config mac"]
    parameters = {key: value for key, value in config.items() if key not in ("created", "mac")}
    assert v["config mac input"] == "watcher-v2 config " + json.dumps(parameters, sort_keys=True, separators=(",", ":"))
    # sealed objects: salt first, 48 bytes more than the plaintext, the AD of the table
    expected_ad = {"key 1 data": f"watcher-v2 key {repository_id}", "key 2 data": f"watcher-v2 key {repository_id}",
                   "pack header": "watcher-v2 pack header", "index": "watcher-v2 index",
                   "snapshot": f"watcher-v2 snapshot {snapshot_id}"}
    for n in BLOBS:
        blob_id, kind, encoding, _, _ = blob_row(v, n)
        expected_ad[f"blob {n}"] = f"watcher-v2 blob {kind} {encoding} {blob_id}"
    objects = sealed_objects(v)
    assert set(objects) == set(expected_ad)
    for what, (_, sealed) in objects.items():
        salt, _, associated, plaintext = steps(v, what)
        assert sealed[:32] == salt and len(sealed) == len(plaintext) + 48, what
        assert associated.decode() == expected_ad[what], what
    for n in (1, 2):
        assert steps(v, f"key {n} data")[3] == encryption + mac
    # the chain: index -> pack -> rows; snapshot -> root tree -> subtree -> data blobs
    rows = [list(blob_row(v, n)) for n in BLOBS]
    assert json.loads(steps(v, "pack header")[3]) == {"version": 2, "blobs": rows}
    assert json.loads(steps(v, "index")[3]) == {"version": 2, "packs": [
        {"id": pack_key.split("/")[-1], "size": len(pack), "blobs": rows}]}
    for n in BLOBS:
        blob_id, kind, _, offset, length = rows[n - 1]
        assert v[f"blob {n} id = HMAC-SHA256(master MAC key, content)"] == blob_id
        assert offset + length <= start
    snapshot = json.loads(steps(v, "snapshot")[3])
    root = json.loads(blob_content(v, 4))
    assert snapshot["tree"] == rows[3][0] and snapshot["sources"] == ["/vector"]
    assert [(e["name"], e["type"], e["subtree"]) for e in root["entries"]] == [("vector", "dir", rows[2][0])]
    files = json.loads(blob_content(v, 3))["entries"]
    assert [(e["content"], e["size"]) for e in files] == [([rows[n - 1][0]], len(blob_content(v, n))) for n in (1, 2)]


def test_each_step_with_the_primitives_the_document_names():
    """A third party's restorer: scrypt, HKDF, AES-GCM, HMAC and zstd, nothing of watcher."""
    v = vector()
    mac = bytes.fromhex(v["master MAC key (hex)"])
    for n in (1, 2):
        key = json.loads(v[f"key {n} bytes"])
        wrapping = hashlib.scrypt(bytes.fromhex(v[f"password {n} as UTF-8 (hex)"]),
                                  salt=base64.b64decode(key["salt"]), n=key["n"], r=key["r"], p=key["p"], dklen=32)
        assert wrapping.hex() == v[f"key {n} wrapping key (hex)"]
    for what, (outer, sealed) in sealed_objects(v).items():
        salt, object_key, associated, plaintext = steps(v, what)
        assert HKDF(hashes.SHA256(), 32, salt, b"watcher-v2 object key").derive(outer) == object_key, what
        assert AESGCM(object_key).decrypt(bytes(12), sealed[32:], associated) == plaintext, what
    for n in BLOBS:
        blob_id, _, encoding, _, _ = blob_row(v, n)
        plaintext = steps(v, f"blob {n}")[3]
        content = zstandard.ZstdDecompressor().decompress(plaintext) if encoding == "zstd" else plaintext
        assert content == blob_content(v, n)
        assert hmac.new(mac, content, "sha256").hexdigest() == blob_id
    assert hmac.new(mac, v["config mac input"].encode(), "sha256").hexdigest() == v["config mac"]
    seed_mac = hmac.new(mac, b"watcher-v2 chunker seed", "sha256").digest()
    assert seed_mac.hex() == v["chunker seed HMAC (hex)"]
    assert int.from_bytes(seed_mac[:8], "big") >> 1 == int(v["chunker seed"])


def test_each_step_with_the_code():
    v = vector()
    repository_id = v["repository id"]
    master = crypto.MasterKey(bytes.fromhex(v["master encryption key (hex)"]), bytes.fromhex(v["master MAC key (hex)"]))
    config = RepoConfig.decode(v["config"].encode())
    assert b"watcher-v2 config " + config.authenticated() == v["config mac input"].encode()
    assert master.config_mac(config.authenticated()) == config.mac == v["config mac"]
    assert master.chunker_seed() == int(v["chunker seed"])
    for n in (1, 2):
        key_id = v[f"key {n} file"].removeprefix("keys/")
        key = crypto.decode_key_file(key_id, v[f"key {n} bytes"].encode())
        assert key.params.derive(v[f"password {n}"], key.salt).hex() == v[f"key {n} wrapping key (hex)"]
        assert key.unwrap(v[f"password {n}"], repository_id) == master
        assert key.unwrap(v[f"password {3 - n}"], repository_id) is None
        assert key.unwrap(v[f"password {n}"], "0" * 32) is None  # bound to the repository id
    for what, (outer, sealed) in sealed_objects(v).items():
        salt, object_key, associated, plaintext = steps(v, what)
        assert crypto.hkdf(outer, salt) == object_key, what
        assert crypto.unseal(outer, sealed, associated, what) == plaintext, what
    codec = EncryptedCodec(master)
    files = stored(v)
    pack_id = v["pack file"].split("/")[-1]
    entries = parse_header(pack_id, files[v["pack file"]], codec)
    assert [(e.id, e.type, e.encoding, e.offset, e.length) for e in entries] == [blob_row(v, n) for n in BLOBS]
    for n, entry in zip(BLOBS, entries, strict=True):
        pack = files[v["pack file"]]
        content = bytes(codec.decode(pack[entry.offset:entry.offset + entry.length], entry))
        assert content == blob_content(v, n) and master.blob_id(content) == entry.id
        if entry.type == "tree":
            assert encode_tree(decode_tree(content, entry.id)) == content  # the canonical form
    assert codec.unseal("index", "", files[v["index file"]], "index") == steps(v, "index")[3]
    snapshot_id = v["snapshot file"].removeprefix("snapshots/")
    plaintext = codec.unseal("snapshot", snapshot_id, files[v["snapshot file"]], "snapshot")
    snapshot = decode_snapshot(snapshot_id, plaintext)
    assert json.loads(encode_snapshot(snapshot)) == json.loads(plaintext)  # the same document, indented


def test_a_password_is_its_utf8_bytes_without_normalization():
    v = vector()
    password = v["password 1"]
    decomposed = unicodedata.normalize("NFD", password)
    assert decomposed != password and unicodedata.normalize("NFC", password) == password
    key = crypto.decode_key_file(v["key 1 file"].removeprefix("keys/"), v["key 1 bytes"].encode())
    assert key.unwrap(decomposed, v["repository id"]) is None


@pytest.mark.parametrize("n", [1, 2])
def test_the_whole_chain_opens_as_a_repository(n):
    """config -> key -> index -> snapshot -> trees -> data blobs, by watcher's own reader."""
    v = vector()
    backend = MemoryBackend()
    backend.objects.update(stored(v))
    repository = Repository(backend, None, Protection(v[f"password {n}"]))
    repository.open()
    assert repository.key_id == v[f"key {n} file"].removeprefix("keys/")
    assert repository.chunker.seed == int(v["chunker seed"])
    repository.load_index()
    [snapshot] = repository.list_snapshots()
    assert snapshot.id == v["snapshot file"].removeprefix("snapshots/")
    found = {path: node for path, node in iter_tree(repository, snapshot.tree)}
    assert sorted(found) == ["/vector", "/vector/hello.txt", "/vector/tiny.txt"]
    for name, blob in (("hello.txt", 1), ("tiny.txt", 2)):
        node = found[f"/vector/{name}"]
        assert b"".join(repository.read_blob(blob_id) for blob_id in node.content) == blob_content(v, blob)
