"""Format v2's cryptography (pure: no I/O but the clock and random bytes); docs/FORMAT.md, "Version 2".

One construction seals everything: a fresh random 32-byte salt, a one-time key derived from a
master key and that salt with HKDF-SHA256, and AES-256-GCM under that key with a zero nonce and
associated data that says what the object is. A key is used for exactly one message, so no
nonce is ever reused, at any repository size (two salts would have to collide: with 2^64 objects,
a chance of 2^-129). Sealing blobs one by one keeps each readable alone (a range read of a pack)
and lets `forget` copy a sealed blob into a new pack as it is.

Master keys (one to encrypt, one to name blobs: HMAC-SHA256) are random; `keys/<id>` holds them
sealed under a key derived from a password with scrypt, whose parameters the key file stores.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from watcher import early_kdf, fields
from watcher.errors import IntegrityError

SALT_SIZE = 32
TAG_SIZE = 16
OVERHEAD = SALT_SIZE + TAG_SIZE  # what sealing adds to a message
NONCE = bytes(12)  # every key seals one message: a fixed nonce is never reused under a key
HKDF_INFO = b"watcher-v2 object key"
KEY_SIZE = 32
MASTER_SIZE = 2 * KEY_SIZE  # encryption key, then MAC key

# scrypt: writers use SCRYPT_N and SCRYPT_R (64 MiB, about restic's 60 MiB: the daemon's memory stays
# below what its backups take anyway) and raise p until one derivation costs about KDF_SECONDS here;
# readers accept what a key file asks within these bounds (a hostile key file must not ask for
# gigabytes, or for an hour of work).
KDF_SECONDS = 0.5
SCRYPT_N, SCRYPT_R = 1 << 16, 8
N_RANGE = (1 << 10, 1 << 20)
R_RANGE = (1, 32)
P_RANGE = (1, 64)
SCRYPT_MEMORY_MAX = 256 * 1024 * 1024  # 128 * n * r
SCRYPT_WORK_MAX = 1 << 25  # n * r * p: 64 times the writers' 0.3 s unit here
KEY_FILE_LIMIT = 64 * 1024
KEY_FILE_VERSION = 1


# HMAC-SHA256 (RFC 2104) from hashlib's SHA-256: for the short messages of HKDF, twice as fast as
# hmac.digest, which sets up an OpenSSL HMAC context per call (each blob pays two, plus its id).
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_BLOCK = 64


def _hmac_sha256(key: bytes, message: bytes | memoryview) -> bytes:
    """hmac.digest(key, message, "sha256") for keys of at most one block (ours: 32 bytes)."""
    padded = key.ljust(_BLOCK, b"\0")
    inner = hashlib.sha256(padded.translate(_IPAD))
    inner.update(message)
    return hashlib.sha256(padded.translate(_OPAD) + inner.digest()).digest()


class _KeyedHash:
    """HMAC-SHA256 under one fixed key, its padded key blocks hashed once: a blob id then costs two
    SHA-256 copies and updates, not a new HMAC context (3x faster on small chunks)."""

    def __init__(self, key: bytes) -> None:
        padded = key.ljust(_BLOCK, b"\0")
        self.inner = hashlib.sha256(padded.translate(_IPAD))
        self.outer = hashlib.sha256(padded.translate(_OPAD))

    def digest(self, message: bytes | memoryview) -> bytes:
        inner = self.inner.copy()
        inner.update(message)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def hkdf(ikm: bytes, salt: bytes, info: bytes = HKDF_INFO) -> bytes:
    """HKDF-SHA256 (RFC 5869) of 32 bytes: one expand block."""
    prk = _hmac_sha256(salt, ikm) if len(salt) <= _BLOCK else hmac.digest(salt, ikm, "sha256")
    return _hmac_sha256(prk, info + b"\x01")


def seal(key: bytes, plaintext: bytes | memoryview, associated: bytes) -> bytes:
    """salt | AES-256-GCM(HKDF(key, salt), zero nonce, plaintext, associated) | tag."""
    return b"".join(seal_parts(key, plaintext, associated))


def seal_parts(key: bytes, plaintext: bytes | memoryview, associated: bytes) -> tuple[bytes, bytes]:
    """`seal` as (salt, ciphertext and tag): a pack joins them once, with everything else."""
    salt = os.urandom(SALT_SIZE)
    return salt, AESGCM(hkdf(key, salt)).encrypt(NONCE, plaintext, associated)


def unseal(key: bytes, sealed: bytes | memoryview, associated: bytes, what: str) -> bytes:
    """The plaintext of `seal`, or IntegrityError naming `what` (damaged, or not ours)."""
    if len(sealed) < OVERHEAD:
        raise IntegrityError(f"{what} is too short to be encrypted data")
    view = memoryview(sealed)
    try:
        return AESGCM(hkdf(key, bytes(view[:SALT_SIZE]))).decrypt(NONCE, view[SALT_SIZE:], associated)
    except InvalidTag:
        raise IntegrityError(f"{what} fails authentication: damaged, or not written with this repository's key"
                             ) from None


@dataclass(frozen=True)
class MasterKey:
    """A repository's keys: `encryption` (HKDF input of every sealed object) and `mac` (blob ids)."""

    encryption: bytes
    mac: bytes

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_SIZE), os.urandom(KEY_SIZE))

    def blob_id(self, data: bytes | memoryview) -> str:
        return self._keyed.digest(data).hex()

    @functools.cached_property
    def _keyed(self) -> _KeyedHash:
        return _KeyedHash(self.mac)

    def chunker_seed(self) -> int:
        """The chunker's seed: secret, so that the server cannot tell chunk boundaries (and from them
        which known file is stored) by their sizes; 63 bits, what the chunker takes."""
        return int.from_bytes(hmac.digest(self.mac, b"watcher-v2 chunker seed", "sha256")[:8], "big") >> 1

    def config_mac(self, authenticated: bytes) -> str:
        """The MAC a version 2 `config` carries over its parameters: the server cannot change them."""
        return hmac.digest(self.mac, b"watcher-v2 config " + authenticated, "sha256").hex()

    def __repr__(self) -> str:
        return "MasterKey(...)"


@dataclass(frozen=True)
class KdfParams:
    n: int
    r: int
    p: int

    def derive(self, password: str, salt: bytes) -> bytes:
        early = early_kdf.take(password, salt, self.n, self.r, self.p, KEY_SIZE)  # begun at start-up, if at all
        if early is not None:
            return early
        return hashlib.scrypt(password.encode(), salt=salt, n=self.n, r=self.r, p=self.p, dklen=KEY_SIZE,
                              maxmem=SCRYPT_MEMORY_MAX + 16 * 1024 * 1024)


def tuned_params(seconds: float = KDF_SECONDS) -> KdfParams:
    """scrypt parameters costing about `seconds` here: 64 MiB, p raised to fill the time (measured
    once, at `init` or `key add`; readers use the stored ones). The measure is half a unit (n/2:
    scrypt's time is linear in n), so that tuning costs a fraction of what the derivation it tunes
    does; not less, for its 32 MiB to stay above what glibc's malloc ever serves from its heaps
    (smaller, freed, it would raise malloc's mmap threshold, and a backup's chunk buffers would then
    stay in the process's memory after use)."""
    n = SCRYPT_N
    while True:
        spent = _seconds(KdfParams(n // 2, SCRYPT_R, 1)) * 2
        if spent <= seconds or n <= 1 << 14:
            break
        n //= 2  # a slow machine: less memory rather than seconds of waiting
    return KdfParams(n, SCRYPT_R, max(P_RANGE[0], min(16, round(seconds / max(spent, 1e-3)))))


def _seconds(params: KdfParams) -> float:
    started = time.perf_counter()
    params.derive("calibration", bytes(SALT_SIZE))
    return time.perf_counter() - started


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object, what: str, low: int, high: int) -> bytes:
    text = fields.text(value, what)
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise fields.FieldError(f"{what}: not base64") from None
    if not low <= len(data) <= high:
        raise fields.FieldError(f"{what}: {len(data)} bytes, not {low} to {high}")
    return data


def key_associated(repository_id: str) -> bytes:
    return f"watcher-v2 key {repository_id}".encode()


@dataclass(frozen=True)
class KeyFile:
    """A decoded `keys/<id>`: what unwraps the master keys with a password."""

    id: str
    params: KdfParams
    salt: bytes
    wrapped: bytes
    created: str
    host: str

    def unwrap(self, password: str, repository_id: str) -> MasterKey | None:
        """The master keys, or None when the password does not open this key."""
        try:
            raw = unseal(self.params.derive(password, self.salt), self.wrapped, key_associated(repository_id), "key")
        except IntegrityError:
            return None
        return MasterKey(raw[:KEY_SIZE], raw[KEY_SIZE:])


def wrap_key(master: MasterKey, repository_id: str, password: str, params: KdfParams) -> bytes:
    """A new key file's bytes (compact JSON: every byte counts); its id is their SHA-256."""
    salt = os.urandom(SALT_SIZE)
    wrapped = seal(params.derive(password, salt), master.encryption + master.mac, key_associated(repository_id))
    document = {"version": KEY_FILE_VERSION, "kdf": "scrypt", "n": params.n, "r": params.r, "p": params.p,
                "salt": _b64(salt), "data": _b64(wrapped), "created": datetime.now(UTC).isoformat(),
                "host": socket.gethostname()}
    return json.dumps(document, separators=(",", ":")).encode()


def decode_key_file(key_id: str, data: bytes) -> KeyFile:
    """A key file, every field checked (IntegrityError otherwise), its id its SHA-256."""
    if hashlib.sha256(data).hexdigest() != key_id:
        raise IntegrityError(f"key {key_id[:12]} does not match its hash")
    try:
        document = fields.mapping(fields.load_json(data), "key")
        fields.version(document, KEY_FILE_VERSION, "key file")
        fields.choice(document["kdf"], "kdf", ("scrypt",))
        n = fields.integer(document["n"], "n", *N_RANGE)
        if n & (n - 1):
            raise fields.FieldError(f"n: {n} is not a power of two")
        params = KdfParams(n, fields.integer(document["r"], "r", *R_RANGE),
                           fields.integer(document["p"], "p", *P_RANGE))
        if 128 * params.n * params.r > SCRYPT_MEMORY_MAX or params.n * params.r * params.p > SCRYPT_WORK_MAX:
            raise fields.FieldError(f"scrypt n={params.n} r={params.r} p={params.p} asks for more than a key may")
        salt = _unb64(document["salt"], "salt", 16, 64)
        wrapped = _unb64(document["data"], "data", OVERHEAD + MASTER_SIZE, OVERHEAD + MASTER_SIZE)
        created = fields.utc_time(document["created"], "created").isoformat()
        host = fields.text(document["host"], "host")
    except (ValueError, KeyError) as error:
        raise IntegrityError(f"key {key_id[:12]} cannot be read: {fields.reason(error)}") from error
    return KeyFile(key_id, params, salt, wrapped, created, host)
