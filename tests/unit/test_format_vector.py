"""docs/FORMAT.md's test vector of format 2, read from the document and checked against the code: a
third party writing a restorer from the document gets what watcher writes."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from watcher import crypto
from watcher.pack import EncryptedCodec, parse_header

FORMAT = Path(__file__).parents[2] / "docs" / "FORMAT.md"


def vector() -> dict[str, object]:
    block = re.search(r"```vector\n(.*?)```", FORMAT.read_text(encoding="utf-8"), re.S)
    assert block is not None, "FORMAT.md has no ```vector block"
    lines = block.group(1).splitlines()
    found: dict[str, object] = {"blobs": []}
    pack_lines: list[str] = []
    for line in lines:
        if line.startswith("  "):
            pack_lines.append(line.strip())
        elif match := re.fullmatch(r"password: (.*)", line):
            found["password"] = match.group(1)
        elif match := re.fullmatch(r"repository id: ([0-9a-f]{32})", line):
            found["repository"] = match.group(1)
        elif match := re.fullmatch(r"key file keys/([0-9a-f]{64}): (.*)", line):
            found["key"] = (match.group(1), match.group(2).encode())
        elif match := re.fullmatch(r"master (encryption|MAC) key \(hex\): ([0-9a-f]{64})", line):
            found[match.group(1)] = bytes.fromhex(match.group(2))
        elif match := re.fullmatch(r"pack packs/([0-9a-f]{2})/([0-9a-f]{64}) \(base64\):", line):
            assert match.group(2).startswith(match.group(1))
            found["pack id"] = match.group(2)
        elif match := re.fullmatch(r"blob ([0-9a-f]{64}) (\w+) (\w+) at (\d+) length (\d+): (.*)", line):
            found["blobs"].append(match.groups())  # type: ignore[union-attr]
        else:
            raise AssertionError(f"unexpected line in the vector: {line!r}")
    found["pack"] = base64.b64decode("".join(pack_lines), validate=True)
    return found


def test_the_documented_vector_opens_with_the_code():
    v = vector()
    key_id, key_data = v["key"]
    key = crypto.decode_key_file(key_id, key_data)
    master = key.unwrap(v["password"], v["repository"])
    assert master is not None, "the password does not open the documented key file"
    assert (master.encryption, master.mac) == (v["encryption"], v["MAC"])
    assert key.unwrap("another password", v["repository"]) is None
    pack = v["pack"]
    assert hashlib.sha256(pack).hexdigest() == v["pack id"]
    codec = EncryptedCodec(master)
    entries = parse_header(v["pack id"], pack, codec)
    documented = [(blob_id, kind, encoding, int(offset), int(length))
                  for blob_id, kind, encoding, offset, length, _ in v["blobs"]]
    assert [(e.id, e.type, e.encoding, e.offset, e.length) for e in entries] == documented
    for entry, (*_, text) in zip(entries, v["blobs"], strict=True):
        assert bytes(codec.decode(pack[entry.offset:entry.offset + entry.length], entry)) == text.encode()


def test_the_documented_construction_is_what_the_code_does():
    """Decrypt the vector's first blob with nothing but the primitives the document names."""
    import hmac

    import zstandard
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    v = vector()
    blob_id, kind, encoding, offset, length, text = v["blobs"][0]
    sealed = v["pack"][int(offset):int(offset) + int(length)]
    key = HKDF(hashes.SHA256(), 32, sealed[:32], b"watcher-v2 object key").derive(v["encryption"])
    plain = AESGCM(key).decrypt(bytes(12), sealed[32:], f"watcher-v2 blob {kind} {encoding} {blob_id}".encode())
    content = zstandard.ZstdDecompressor().decompress(plain) if encoding == "zstd" else plain
    assert content == text.encode()
    assert hmac.new(v["MAC"], content, "sha256").hexdigest() == blob_id
