"""The repository over one backend: key layout, dedup, packs, index, atomic snapshot commit.

Layout (see docs/FORMAT.md):
    config                 format version, id, chunker parameters
    packs/<xx>/<pack id>   blobs packed together; id = SHA-256 of the whole pack
    index/<index id>       which blob is where; id = SHA-256 of the index file
    snapshots/<snap id>    one small JSON document per snapshot, written last

Write order is packs, then the index naming them, then the snapshot: a crash at any point
leaves at worst packs no index names (wasted space, reused by nothing) or an index whose
blobs the next run reuses; never a snapshot naming something missing.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from watcher import crypto, fields
from watcher.backends.base import Backend
from watcher.cache import LocalCache
from watcher.errors import (
    ConfigError,
    IntegrityError,
    NotFoundError,
    PermanentError,
    RepositoryError,
    SnapshotNotFoundError,
    TransientError,
)
from watcher.pack import PACK_TARGET, PLAIN, BlobEntry, Codec, EncryptedCodec, PackBuilder, PiecesReader
from watcher.private import write_file
from watcher.snapshot import (
    BadEntry,
    Node,
    Snapshot,
    dated_in_future,
    decode_snapshot,
    decode_tree,
    digest,
    encode_snapshot,
    read_tree,
)

log = logging.getLogger(__name__)

FORMAT_NAME = "watcher-repository"
FORMAT_VERSION = 1
FORMAT_ENCRYPTED = 2  # docs/FORMAT.md, "Version 2": everything but `config` sealed, zstd, keyed blob ids
ENCRYPTION = "aes-256-gcm"
INDEX_EVERY_PACKS = 8
INDEX_BLOBS = 250_000  # the most blobs one index file names (about 27 MB)
# Packs handed to the upload threads and not uploaded yet, besides the one being filled: one per
# upload thread (a backend's `concurrent_puts`). With one thread that is double buffering (the scan
# fills a pack while the previous one uploads), so a backup holds at most two packs (~32 MiB); the
# upload is the slower side, so a deeper queue only held more memory.
STAT_PACKS_AT_MOST = 256  # more packs written: one listing of packs/ is cheaper than a stat for each


class PacksRemovedError(RepositoryError, TransientError):
    """A `forget` removed data a running backup relies on; the next attempt reads the index again."""


class WrongPasswordError(RepositoryError, PermanentError):
    """No key of an encrypted repository opens with the password given: retrying cannot help."""


@dataclass(frozen=True)
class Protection:
    """How a repository is opened and created: BACKUP_REPOSITORY_PASSWORD, BACKUP_ENCRYPTION,
    BACKUP_COMPRESSION, and whether the target is a server (a new repository there is refused
    without a password unless encryption is `none`)."""

    password: str | None = field(default=None, repr=False)
    encryption: str = "auto"
    compression: str = "auto"
    server: bool = False


# Master keys unwrapped in this process: (repository id, password tag) -> (key id, keys). scrypt
# costs about half a second on purpose; the daemon opens its repositories again after a failed
# run, and must not pay it again for each. The tag is an HMAC under a key of this process alone:
# what memory holds is no fast test of a guessed password.
_UNLOCKED: dict[tuple[str, str], tuple[str, crypto.MasterKey]] = {}
_TAG_KEY = os.urandom(32)


def _unlocked_key(repository_id: str, password: str) -> tuple[str, str]:
    return repository_id, hmac.digest(_TAG_KEY, password.encode(), "sha256").hex()

# What `open` creates: it names the local cache's folder, so nothing else may pass (no `..`, no `/`).
REPOSITORY_ID = re.compile(r"[0-9a-f]{32}")
# The names a repository writes in each folder (docs/FORMAT.md). Anything else there is not this
# repository's (another repository under a longer prefix of the same bucket or folder, a stray file):
# it is neither read nor ever deleted.
LAYOUT = {
    "keys": re.compile(r"keys/([0-9a-f]{64})"),
    "index": re.compile(r"index/([0-9a-f]{64})"),
    "snapshots": re.compile(r"snapshots/(\d{8}T\d{6}Z-[0-9a-f]{8})"),
    "packs": re.compile(r"packs/([0-9a-f]{2})/(\1[0-9a-f]{62})"),
}
# The most bytes read for each kind of object (docs/FORMAT.md, "Limits"): the server is not
# trusted, and an object that never ends must not fill memory. A pack is read up to the size its
# index records, which may not exceed PACK_LIMIT (packs are about `pack_size`, 16 MiB, and exceed
# it by one blob at most); one index may name every pack (after `forget`): about 110 bytes a blob.
CONFIG_LIMIT = 64 * 1024
SNAPSHOT_LIMIT = 16 * 1024 * 1024
INDEX_LIMIT = 1024 * 1024 * 1024
PACK_LIMIT = 2 * 1024 * 1024 * 1024
# How many entries a snapshot's tree may expand to: twice what its summary records plus a margin
# (earlier watchers' event-driven runs recorded only the folders they walked), never more than
# MAX_ENTRIES. Trees name subtrees by id, so 48 KB of trees can name one subtree 2^40 times over.
ENTRIES_MARGIN = 1_000_000
MAX_ENTRIES = 1_000_000_000


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 512 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 8 * 1024 * 1024
    normalization: int = 1
    seed: int = 0


# What the chunker (pyfastcdc) accepts: outside these it refuses to start.
CHUNKER_LIMITS = {"min_size": (64, 1 << 20), "avg_size": (256, 4 << 20), "max_size": (1024, 16 << 20),
                  "normalization": (0, 3), "seed": (0, 2**63 - 1)}
PACK_SIZE_MAX = 1 << 30  # a pack is built in memory
# Version 2's smallest packs: many tiny packs would tell the server more about the files' sizes.
PACK_SIZE_MIN_ENCRYPTED = 1 << 20
# The most key files a reader tries (scrypt, up to seconds each): a server adding thousands of them
# must not make opening the repository take hours. `key add` refuses to go beyond it. Files that are
# refused before scrypt (damaged, parameters out of bounds) cost a read each: at most KEYS_READ_MAX.
KEYS_MAX = 16
KEYS_READ_MAX = 64


def _chunker_from_json(value: object) -> ChunkerParams:
    document = fields.mapping(value, "chunker")
    defaults = ChunkerParams()
    params = ChunkerParams(**{
        key: fields.integer(document.get(key, getattr(defaults, key)), f"chunker.{key}", low, high)
        for key, (low, high) in CHUNKER_LIMITS.items()
    })
    if not params.min_size <= params.avg_size <= params.max_size:
        raise fields.FieldError("chunker: sizes are not min_size <= avg_size <= max_size")
    return params


@dataclass(frozen=True)
class RepoConfig:
    id: str
    chunker: ChunkerParams
    pack_size: int = PACK_TARGET
    compression: str = "none"
    encryption: str = "none"
    version: int = FORMAT_VERSION
    mac: str = ""  # version 2: HMAC of `authenticated()` under the master MAC key

    def _parameters(self) -> dict[str, object]:
        return {
            "format": FORMAT_NAME,
            "version": self.version,
            "id": self.id,
            "hash": "hmac-sha256" if self.version == FORMAT_ENCRYPTED else "sha256",
            "chunker": {"algorithm": "fastcdc2020", **vars(self.chunker)},
            "pack_size": self.pack_size,
            "compression": self.compression,
            "encryption": self.encryption,
        }

    def authenticated(self) -> bytes:
        """What a version 2 config's `mac` covers (docs/FORMAT.md): every parameter, as sorted compact JSON."""
        return json.dumps(self._parameters(), sort_keys=True, separators=(",", ":")).encode()

    def encode(self) -> bytes:
        document = {**self._parameters(), "created": datetime.now(UTC).isoformat()}
        if self.version == FORMAT_ENCRYPTED:
            document["mac"] = self.mac
        return json.dumps(document, indent=1).encode()

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        try:
            document = fields.mapping(fields.load_json(data), "config")
            if document.get("format") != FORMAT_NAME:
                raise RepositoryError("the target holds something that is not a watcher repository")
            version = document.get("version")
            if type(version) is not int or version not in (FORMAT_VERSION, FORMAT_ENCRYPTED):
                raise RepositoryError(f"repository format version {fields.shown(version)} is not supported by "
                                      "this watcher")
            expected = (("none", "none", "sha256") if version == FORMAT_VERSION
                        else (ENCRYPTION, "zstd", "hmac-sha256"))
            found = (document.get("encryption", "none"), document.get("compression", "none"),
                     document.get("hash", "sha256"))
            if found != expected:
                raise RepositoryError(f"this repository (format {version}) uses encryption, compression or a hash "
                                      f"this watcher cannot read: {fields.shown(list(found))}")
            repository_id = document["id"]
            if not isinstance(repository_id, str) or not REPOSITORY_ID.fullmatch(repository_id):
                raise RepositoryError(f"repository config: the id {fields.shown(repository_id)} is not 32 hex digits")
            if version == FORMAT_ENCRYPTED:
                pack_size = fields.integer(document["pack_size"], "pack_size", PACK_SIZE_MIN_ENCRYPTED, PACK_SIZE_MAX)
                mac = fields.hex_id(document["mac"], "mac")
                chunker = _chunker_from_json(document["chunker"])
                if chunker.seed != 0:
                    raise fields.FieldError("chunker.seed: a version 2 repository derives it from its key; 0 expected")
            else:
                pack_size = fields.integer(document["pack_size"], "pack_size", 1, PACK_SIZE_MAX)
                mac, chunker = "", _chunker_from_json(document["chunker"])
            return cls(repository_id, chunker, pack_size, expected[1], expected[0], version, mac)
        except (ValueError, KeyError) as error:
            raise IntegrityError(f"repository config cannot be read: {fields.reason(error)}") from error


def pack_key(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id}"


class Repository:
    """A watcher repository on one backend, with a local cache for immutable objects."""

    def __init__(self, backend: Backend, state_dir: Path | None, protection: Protection | None = None) -> None:
        self.backend = backend
        self.state_dir = state_dir
        self.protection = protection or Protection()
        self.config: RepoConfig | None = None
        self.codec: Codec = PLAIN
        self.key_id: str | None = None  # the key that opened an encrypted repository
        self.cache = LocalCache(None)
        self.blobs: dict[str, BlobEntry] = {}
        self.packs: dict[str, int] = {}
        self.pack_blobs: dict[str, list[BlobEntry]] = {}
        self.indexes: set[str] = set()
        self.decoded: dict[str, Snapshot] = {}  # snapshot documents never change: decode each once
        self.unreadable: dict[str, str] = {}  # snapshot id -> why it cannot be read, as last listed
        self.entry_counts: dict[str, int] = {}  # tree id -> entries below it (trees never change either)
        self.lock = threading.RLock()
        self.temporaries_swept: float | None = None  # when `forget` last looked for left-over uploads
        self._early: tuple[str, str, threading.Thread, dict[str, crypto.MasterKey | None]] | None = None
        self._prepared: tuple[threading.Thread, list[tuple[str, crypto.MasterKey, bytes]]] | None = None

    # -- opening -----------------------------------------------------------------------------

    def open(self, *, create: bool = False, pack_size: int = PACK_TARGET,
             exclusive: Callable[[], AbstractContextManager[object]] | None = None) -> None:
        """Read the repository config, creating the repository if `create` and none exists.

        `exclusive` (an exclusive repository lock) is held while creating: two processes creating one
        repository at once would otherwise each write a config and a key, and one of them would then
        write data under a key the config no longer names."""
        data = self._read_config()
        if data is None:
            if not create:
                self._refuse_over_data()
                raise RepositoryError(f"no repository at {self.backend.describe()} (run a backup first)")
            self._check_creation()  # before the lock: a refusal writes nothing on the target
            with exclusive() if exclusive else contextlib.nullcontext():
                data = self._read_config()  # made by another process before the lock was ours
                if data is None:
                    self._refuse_over_data()
                    self._create(pack_size)
        if data is not None:
            self.config = RepoConfig.decode(data)
            if self.config.version == FORMAT_ENCRYPTED:
                self._unlock()
            else:
                self._accept_plain()
        if self.state_dir is not None:
            self.cache = LocalCache(self.state_dir / "repos" / self.config.id / "cache.db",
                                    {"tree": self.codec.blob_id})

    @property
    def chunker(self) -> ChunkerParams:
        """The chunker's parameters: the config's, with version 2's secret seed (`MasterKey.chunker_seed`)."""
        assert self.config is not None
        if isinstance(self.codec, EncryptedCodec):
            return replace(self.config.chunker, seed=self.codec.master.chunker_seed())
        return self.config.chunker

    def _read_config(self) -> bytes | None:
        try:
            return self.backend.get_bytes("config", CONFIG_LIMIT)
        except NotFoundError:
            return None

    def _accept_plain(self) -> None:
        """Whether an unencrypted (format 1) repository may be used. Its plain `config` is not
        authenticated: a server can present any repository as one, to be sent plain data or to have
        forged files restored, so what this machine knows decides. Refused where it opened an
        encrypted repository before (this id, or this target); and, with BACKUP_REPOSITORY_PASSWORD
        set, on a server target this machine has not used it at, unless BACKUP_ENCRYPTION=none
        accepts it there (recorded: later runs may go back to `auto`)."""
        assert self.config is not None
        where, protection = self.backend.describe(), self.protection
        for marker in (self._encrypted_marker(), self._target_file(".encrypted")):
            if marker is not None and marker.exists():
                raise IntegrityError(f"the repository at {where} was encrypted when this machine last opened it, "
                                     "and its config now says it is not: refused (was the config replaced on the "
                                     f"server? if you made it again unencrypted on purpose, delete {marker})")
        if not protection.password:
            return
        if protection.server and not self._plain_known():
            if protection.encryption != "none":
                raise RepositoryError(
                    f"the repository at {where} is not encrypted (format 1) and this machine has not used it there "
                    "before: refused, since BACKUP_REPOSITORY_PASSWORD is set (a server can present any repository "
                    "as unencrypted); if it was made so on purpose or by an earlier watcher, run one command (such "
                    "as `watcher doctor`) with BACKUP_ENCRYPTION=none to accept it at this target")
            self._record_plain()
        log.warning("the repository at %s is not encrypted (format 1, made so or by an earlier watcher): "
                    "BACKUP_REPOSITORY_PASSWORD is not used for it", where)

    def _plain_known(self) -> bool:
        """This unencrypted repository was made, accepted or backed up into by this machine at this target:
        `targets/<hash>.plain` names its id; or, for a state folder of an earlier watcher (no such record),
        this machine backed up into it (its last-snapshot record) and no other target's record claims it."""
        assert self.config is not None
        record, known = self._target_file(".plain"), self._repository_dir()
        if record is None or known is None:
            return False
        try:
            return record.read_text().strip() == self.config.id
        except FileNotFoundError:
            pass
        except OSError:
            return False
        claimed = any(other.read_text().strip() == self.config.id for other in record.parent.glob("*.plain"))
        if claimed or not (known / "last-snapshot.json").exists():
            return False
        self._record_plain()
        return True

    def _record_plain(self) -> None:
        record = self._target_file(".plain")
        if record is not None and self.config is not None:
            try:
                write_file(record, self.config.id.encode())
            except OSError as error:
                log.warning("cannot record in %s that this unencrypted repository was accepted: %s", record,
                            error.strerror or error)

    def _check_creation(self) -> None:
        """Refuse, before anything is written, a repository `_create` must not make: an unencrypted one on
        a server without BACKUP_ENCRYPTION=none, or where this machine opened an encrypted one."""
        protection, where = self.protection, self.backend.describe()
        if protection.password and protection.encryption != "none":
            return
        if protection.server and protection.encryption != "none":
            raise ConfigError([f"BACKUP_REPOSITORY_PASSWORD: required to create the new repository at {where}: "
                               "a repository on a server is encrypted (set BACKUP_ENCRYPTION=none to store it "
                               "unencrypted on purpose)"])
        marker = self._target_file(".encrypted")
        if marker is not None and marker.exists() and protection.encryption != "none":
            raise ConfigError([f"BACKUP_REPOSITORY_PASSWORD: required to create the new repository at {where}: this "
                               "target held an encrypted repository (set BACKUP_ENCRYPTION=none to make an "
                               "unencrypted one there on purpose)"])

    def _refuse_over_data(self) -> None:
        """No new repository where one's data lies without its config (deleted, or lost): a new
        config would stand beside data it cannot read, and runs would fail there for good; reading
        commands and `doctor` say so too, rather than "no repository yet". Keys alone are what a
        creation cut short leaves: a new one is made beside them."""
        for folder in ("snapshots", "index", "packs"):
            if self.listed(folder):
                raise RepositoryError(
                    f"{self.backend.describe()} holds a repository's {folder}/ but no config: its config is lost "
                    "(put it back; no new repository is made over it: choose another place for one)")

    def _create(self, pack_size: int) -> None:
        """A new repository (`_check_creation` allowed it): encrypted when a password is given and
        encryption is not `none`, otherwise plain (format 1)."""
        protection, where = self.protection, self.backend.describe()
        if protection.password and protection.encryption != "none":
            if pack_size < PACK_SIZE_MIN_ENCRYPTED:
                raise RepositoryError(f"an encrypted repository's packs are at least {PACK_SIZE_MIN_ENCRYPTED} bytes")
            repository_id, master, key_file = self._take_prepared()
            config = RepoConfig(repository_id, ChunkerParams(), pack_size, "zstd", ENCRYPTION, FORMAT_ENCRYPTED)
            self.config = replace(config, mac=master.config_mac(config.authenticated()))
            self._use(master, self._put_key(master, protection.password, data=key_file))
            self.backend.put_bytes("config", self.config.encode())  # last: a repository exists once it has a config
            log.info("created a new encrypted repository at %s (keep BACKUP_REPOSITORY_PASSWORD safe: without it "
                     "the backups cannot be read)", where)
            return
        self.config = RepoConfig(os.urandom(16).hex(), ChunkerParams(), pack_size)
        self.backend.put_bytes("config", self.config.encode())
        marker = self._target_file(".encrypted")
        if marker is not None and marker.exists():
            marker.unlink()  # BACKUP_ENCRYPTION=none: unencrypted here now, on purpose
        self._record_plain()
        why = "BACKUP_ENCRYPTION=none" if protection.encryption == "none" else "BACKUP_REPOSITORY_PASSWORD is not set"
        log.info("created a new repository at %s, not encrypted (%s)", where, why)

    def _use(self, master: crypto.MasterKey, key_id: str) -> None:
        """Open with these master keys, once they have authenticated the config's parameters."""
        assert self.config is not None
        if not hmac.compare_digest(master.config_mac(self.config.authenticated()), self.config.mac):
            raise IntegrityError(f"the config of the repository at {self.backend.describe()} fails authentication: "
                                 "its parameters were changed (on the server?): refused")
        self.codec = EncryptedCodec(master, self.protection.compression)
        self.key_id = key_id
        for marker in (self._encrypted_marker(), self._target_file(".encrypted")):
            if marker is not None and not marker.exists():
                try:
                    write_file(marker, b"")
                except OSError as error:
                    log.warning("cannot record in %s that this repository is encrypted: %s", marker,
                                error.strerror or error)

    def _repository_dir(self) -> Path | None:
        """`BACKUP_STATE_DIR/repos/<id>`: what this machine keeps of a repository (cache, records)."""
        if self.state_dir is None or self.config is None:
            return None
        return self.state_dir / "repos" / self.config.id

    def _encrypted_marker(self) -> Path | None:
        """`BACKUP_STATE_DIR/repos/<id>/encrypted`: this machine opened the repository encrypted once. The
        plain `config` is not authenticated; this keeps a server from passing it off as unencrypted
        (format 1) to a machine that knows better, which would then upload plain data."""
        known = self._repository_dir()
        return None if known is None else known / "encrypted"

    def _target_file(self, suffix: str) -> Path | None:
        """`BACKUP_STATE_DIR/targets/<hash of the URL><suffix>`: what this machine knows of this target.
        `.key`: see `_key_record`; `.encrypted` (empty): it held an encrypted repository, so a plain one
        there now, whatever its id, is refused; `.plain`: the id of the unencrypted repository accepted there."""
        if self.state_dir is None:
            return None
        return self.state_dir / "targets" / f"{digest(self.backend.describe().encode())[:32]}{suffix}"

    def _put_key(self, master: crypto.MasterKey, password: str, *, remember: bool = False,
                 data: bytes | None = None) -> str:
        """Write a key file (`data`, made ahead, or made now); `remember`: it is the one this target
        opens with from now on (`_key_record`)."""
        assert self.config is not None
        data = data or crypto.wrap_key(master, self.config.id, password, crypto.tuned_params())
        key_id = digest(data)
        self.backend.put_bytes(f"keys/{key_id}", data)
        _UNLOCKED[_unlocked_key(self.config.id, password)] = (key_id, master)
        if remember or password == self.protection.password:
            self._remember_key(key_id, data)
        return key_id

    # The key file this target was last opened with, copied to the state folder (it is wrapped: the
    # server holds the same bytes). A process can then run scrypt in a thread before it has even
    # connected (scrypt releases the GIL): the half second overlaps connecting, reading the config and
    # listing the keys, instead of following them.

    def _key_record(self) -> Path | None:
        return self._target_file(".key")

    def _remember_key(self, key_id: str, data: bytes) -> None:
        path = self._key_record()
        if path is None or self.config is None:
            return
        record = json.dumps({"repository": self.config.id, "key": key_id, "file": data.decode()}).encode()
        try:
            if path.exists() and path.read_bytes() == record:
                return
            write_file(path, record)
        except OSError as error:
            log.debug("cannot keep a copy of the key file in %s: %s", path, error.strerror or error)

    def start_unlock(self, *, create: bool = False) -> None:
        """Start unwrapping the key this target was last opened with (see `_key_record`), if any; or,
        when `create` may have to make an encrypted repository at a target this machine never opened,
        start making its key (`_prepare_key`)."""
        password, path = self.protection.password, self._key_record()
        if not password or path is None:
            return
        if not path.exists():
            if create and self.protection.encryption != "none":
                self._prepare_key(password)
            return
        try:
            record = fields.mapping(fields.load_json(path.read_bytes()), "key record")
            repository_id, key_id = record["repository"], fields.hex_id(record["key"], "key")
            if not isinstance(repository_id, str) or not REPOSITORY_ID.fullmatch(repository_id):
                return
            key = crypto.decode_key_file(key_id, fields.text(record["file"], "file").encode())
        except (OSError, ValueError, KeyError, IntegrityError):
            return  # only a head start: the key is read from the target as usual
        if _unlocked_key(repository_id, password) in _UNLOCKED:
            return
        result: dict[str, crypto.MasterKey | None] = {}

        def unwrap() -> None:
            try:
                result["master"] = key.unwrap(password, repository_id)
            except Exception as error:  # only a head start: _unlock tries this key itself, and says why
                log.debug("the early key derivation failed: %s", error)

        thread = threading.Thread(target=unwrap, name="key-unwrap", daemon=True)
        thread.start()
        self._early = (repository_id, key_id, thread, result)

    def _prepare_key(self, password: str) -> None:
        """A new repository's id, master keys and key file, made in a thread beside connecting: tuning
        and running scrypt cost most of a second, which a first backup would otherwise wait for. Used
        by `_create` if the target turns out to hold no repository; otherwise dropped."""
        made: list[tuple[str, crypto.MasterKey, bytes]] = []

        def prepare() -> None:
            try:
                repository_id, master = os.urandom(16).hex(), crypto.MasterKey.generate()
                made.append((repository_id, master, crypto.wrap_key(master, repository_id, password,
                                                                    crypto.tuned_params())))
            except Exception as error:  # only a head start: _create makes the key itself, and says why
                log.debug("making the new repository's key ahead failed: %s", error)

        thread = threading.Thread(target=prepare, name="key-prepare", daemon=True)
        thread.start()
        self._prepared = (thread, made)

    def _take_prepared(self) -> tuple[str, crypto.MasterKey, bytes | None]:
        """What `_prepare_key` made (waiting for it), or a new id and master keys with no key file yet."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared[0].join()
            if prepared[1]:
                return prepared[1][0]
        return os.urandom(16).hex(), crypto.MasterKey.generate(), None

    def _recorded_key_id(self) -> str | None:
        path = self._key_record()
        try:
            key_id = json.loads(path.read_bytes())["key"] if path is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return key_id if isinstance(key_id, str) else None

    def _early_key(self, listed: list[str]) -> tuple[str | None, crypto.MasterKey | None]:
        """(the key id the head start tried, its master keys if they open this repository)."""
        if self._early is None or self.config is None:
            return None, None
        repository_id, key_id, thread, result = self._early
        self._early = None
        thread.join()
        if repository_id != self.config.id or key_id not in listed or "master" not in result:
            return None, None  # another repository at that place now, a key removed since, or it failed
        return key_id, result["master"]

    def listed(self, folder: str) -> dict[str, int]:
        """The objects of `folder` ("keys", "index", "snapshots", "packs") named as this repository
        names them: {id: size}; other names there are left alone (see LAYOUT)."""
        pattern = LAYOUT[folder]
        found: dict[str, int] = {}
        for info in self.backend.list(folder):
            match = pattern.fullmatch(info.key)
            if match is not None:
                found[match.group(match.lastindex or 1)] = info.size
        return found

    def key_ids(self) -> list[str]:
        return sorted(self.listed("keys"))

    def read_key(self, key_id: str) -> crypto.KeyFile:
        return crypto.decode_key_file(key_id, self.backend.get_bytes(f"keys/{key_id}", crypto.KEY_FILE_LIMIT))

    def _unlock(self) -> None:
        """Find the key the password opens (once per process and repository: scrypt costs ~0.5 s)."""
        assert self.config is not None
        password, where = self.protection.password, self.backend.describe()
        if not password:
            raise ConfigError([f"BACKUP_REPOSITORY_PASSWORD: the repository at {where} is encrypted: set it (or "
                               "BACKUP_REPOSITORY_PASSWORD_FILE) to the password of one of its keys"])
        listed = self.key_ids()
        remembered = _UNLOCKED.get(_unlocked_key(self.config.id, password))
        if remembered is not None and remembered[0] in listed:
            self._use(remembered[1], remembered[0])
            return
        tried, master = self._early_key(listed)
        if tried is not None and master is not None:
            _UNLOCKED[_unlocked_key(self.config.id, password)] = (tried, master)
            self._use(master, tried)
            return
        damaged = []
        derived = int(tried is not None)  # scrypt runs, each up to seconds: at most KEYS_MAX
        read = 0  # key files fetched: at most KEYS_READ_MAX
        preferred = self._recorded_key_id()  # the key that last opened this target, first
        for key_id in sorted(listed, key=lambda key_id: key_id != preferred):
            if key_id == tried:
                continue  # the head start found it does not open with this password
            if derived >= KEYS_MAX or read >= KEYS_READ_MAX:
                break
            read += 1
            try:
                data = self.backend.get_bytes(f"keys/{key_id}", crypto.KEY_FILE_LIMIT)
                key = crypto.decode_key_file(key_id, data)
            except (IntegrityError, NotFoundError) as error:
                damaged.append(str(error))
                continue
            derived += 1
            master = key.unwrap(password, self.config.id)
            if master is not None:
                _UNLOCKED[_unlocked_key(self.config.id, password)] = (key_id, master)
                self._use(master, key_id)
                self._remember_key(key_id, data)
                return
        if not listed:
            raise IntegrityError(f"the encrypted repository at {where} has no key at all (keys/ is empty): it cannot "
                                 "be opened")
        if derived == 0:
            raise IntegrityError(f"no key file of the encrypted repository at {where} can be read ({len(damaged)} "
                                 f"damaged: {'; '.join(damaged[:3])}): it cannot be opened")
        if derived + len(damaged) < len(listed):
            raise IntegrityError(f"the encrypted repository at {where} has {len(listed)} key files, more than the "
                                 f"{KEYS_MAX} a reader tries (were key files added on the server?): none of the "
                                 f"{derived} tried opens with BACKUP_REPOSITORY_PASSWORD")
        detail = f"; {len(damaged)} key files are damaged ({'; '.join(damaged[:3])})" if damaged else ""
        raise WrongPasswordError(f"BACKUP_REPOSITORY_PASSWORD does not open the encrypted repository at {where}: "
                                 f"wrong password{detail}")

    def add_key(self, password: str, *, remember: bool = False) -> str:
        """A new key for the open repository's master keys, opened by `password`; its id. The caller
        holds the exclusive lock (so does every key change: see `remove_key`)."""
        if not isinstance(self.codec, EncryptedCodec):
            raise RepositoryError(f"the repository at {self.backend.describe()} is not encrypted: it has no keys")
        if len(self.key_ids()) >= KEYS_MAX:
            raise RepositoryError(f"the repository has {KEYS_MAX} keys, the most a reader tries: remove one first")
        return self._put_key(self.codec.master, password, remember=remember)

    def remove_key(self, key_id: str) -> None:
        """Remove a key, never the last one, nor the one this process opened the repository with. The
        caller holds the exclusive lock: two removals at once, each seeing the other's key, would
        otherwise leave none."""
        listed = self.key_ids()
        if key_id not in listed:
            raise RepositoryError(f"no key {key_id}")
        if len(listed) == 1:
            raise RepositoryError(f"key {key_id[:12]} is the repository's last key: add another first")
        if key_id == self.key_id:
            raise RepositoryError(f"key {key_id[:12]} is the one BACKUP_REPOSITORY_PASSWORD opens: "
                                  "use `watcher key passwd` to change it")
        self.backend.delete(f"keys/{key_id}")

    def close(self) -> None:
        self.cache.close()
        self.backend.close()

    def load_index(self) -> None:
        """Load the index files not loaded yet (from the local cache when it holds them).

        If an index loaded earlier is gone, a `forget` rewrote the index and may have deleted
        packs: everything is read again, so no blob is believed stored that is not.
        """
        listed = set(self.listed("index"))
        if self.indexes - listed:
            self.blobs, self.packs, self.pack_blobs, self.indexes = {}, {}, {}, set()
        for index_id in sorted(listed - self.indexes):
            self._add_index(index_id, self._read_index(index_id))
        self.cache.drop_blobs_except("index", listed)
        self.cache.commit()

    def _read_index(self, index_id: str) -> bytes:
        """An index file as stored (encrypted in format 2: so it stays in the local cache too)."""
        data = self.cache.get_blob(index_id)
        if data is None:
            data = self.backend.get_bytes(f"index/{index_id}", INDEX_LIMIT)
            if digest(data) != index_id:
                raise IntegrityError(f"index {index_id[:12]} does not match its hash")
            self.cache.put_blob(index_id, "index", data)
        return data

    def _add_index(self, index_id: str, data: bytes) -> None:
        """Read a whole index before using any of it: a bad one changes nothing."""
        packs = []
        encodings = self.codec.encodings
        plain = self.codec.unseal("index", "", data, f"index {index_id[:12]}")
        try:
            document = fields.mapping(fields.load_json(plain), "index")
            fields.version(document, self.codec.version, "index")
            for pack in fields.array(document["packs"], "packs"):
                pack = fields.mapping(pack, "pack")
                pack_id = fields.hex_id(pack["id"], "pack id")
                size = fields.integer(pack["size"], "pack size")
                packs.append((pack_id, size, [BlobEntry.from_row(row, pack_id, encodings)
                                              for row in fields.array(pack["blobs"], "blobs")]))
        except (ValueError, KeyError) as error:
            raise IntegrityError(f"index {index_id[:12]} cannot be read: {fields.reason(error)}") from error
        for pack_id, size, entries in packs:
            self.packs[pack_id] = size
            self.pack_blobs[pack_id] = entries
            for entry in entries:
                self.blobs.setdefault(entry.id, entry)
        self.indexes.add(index_id)

    # -- reading -----------------------------------------------------------------------------

    def has_blob(self, blob_id: str) -> bool:
        return blob_id in self.blobs

    def pack_size(self, pack_id: str) -> int:
        """The size the index records for a pack: the most ever read of it."""
        size = self.packs.get(pack_id, 0)
        if size > PACK_LIMIT:
            raise IntegrityError(f"pack {pack_id[:12]}: the index says {size} bytes, more than a pack may hold")
        return size

    def locate(self, blob_id: str) -> BlobEntry:
        """Where a blob is: see `placed`."""
        entry = self.blobs.get(blob_id)
        if entry is None:
            raise IntegrityError(f"blob {blob_id[:12]} is in no index")
        return self.placed(entry)

    def placed(self, entry: BlobEntry) -> BlobEntry:
        """`entry`, refused unless it lies within its pack as the index records it (a declared
        length of 10^15 must not become a read, nor an allocation, of that size)."""
        if entry.offset + entry.length > self.pack_size(entry.pack):
            raise IntegrityError(f"blob {entry.id[:12]}: the index places it beyond the end of pack {entry.pack[:12]}")
        return entry

    def read_blob(self, blob_id: str) -> bytes:
        """A blob's content, verified against its id."""
        entry = self.locate(blob_id)
        with self.lock:
            stored = self.backend.read_range(pack_key(entry.pack), entry.offset, entry.length)
        return bytes(self.codec.decode(stored, entry))

    def check_expansion(self, snapshot: Snapshot, tree_id: str | None = None) -> None:
        """Refuse, before walking it, a snapshot whose tree (or the subtree `tree_id` of it)
        expands to more entries than it may hold; each distinct tree is loaded once here."""
        problem = expansion_problem(snapshot, count_entries(self._children, tree_id or snapshot.tree,
                                                            self.entry_counts))
        if problem:
            raise IntegrityError(problem)

    def _children(self, tree_id: str) -> tuple[int, list[str]]:
        """A tree's number of entries and its folders' trees; a tree that cannot be read counts
        as empty here: the walk that needs it reports it (and a restore goes on without it)."""
        try:
            nodes, _bad = self.load_readable_tree(tree_id)
        except (IntegrityError, NotFoundError):
            return 0, []
        return len(nodes), [node.subtree for node in nodes if node.kind == "dir" and node.subtree]

    def _tree_data(self, tree_id: str) -> bytes:
        data = self.cache.get_blob(tree_id)
        if data is None:
            data = self.read_blob(tree_id)
            self.cache.put_blob(tree_id, "tree", data)
        return data

    def load_tree(self, tree_id: str) -> list[Node]:
        return decode_tree(self._tree_data(tree_id), tree_id)

    def load_readable_tree(self, tree_id: str) -> tuple[list[Node], list[BadEntry]]:
        """The entries that can be read, and the bad ones (for restore and check, which go on past them)."""
        return read_tree(self._tree_data(tree_id), tree_id)

    def read_pack(self, pack_id: str, *, verify: bool = True) -> bytes:
        """A whole pack; `verify=False` skips the pack's hash when every blob taken from it is checked."""
        limit = self.pack_size(pack_id)
        with self.lock:
            data = self.backend.get_bytes(pack_key(pack_id), limit)
        if verify and digest(data) != pack_id:
            raise IntegrityError(f"pack {pack_id[:12]} does not match its hash")
        return data

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot_ids(self) -> list[str]:
        return sorted(self.listed("snapshots"))

    def load_snapshot(self, snapshot_id: str, *, cached: bool = False) -> Snapshot:
        """A snapshot document; `cached` allows the local copy (for ids just listed on the server)."""
        data = self.cache.get_snapshot(snapshot_id) if cached else None
        fetched = data is None
        if data is None:
            try:
                data = self.backend.get_bytes(f"snapshots/{snapshot_id}", SNAPSHOT_LIMIT)
            except NotFoundError:
                raise SnapshotNotFoundError(f"snapshot {snapshot_id} not found") from None
        snapshot = decode_snapshot(snapshot_id, self.codec.unseal("snapshot", snapshot_id, data,
                                                                  f"snapshot {snapshot_id}"))
        if fetched:
            self.cache.put_snapshot(snapshot_id, data)  # only once it is known good
        return snapshot

    def list_snapshots(self) -> list[Snapshot]:
        """Every snapshot that can be read, oldest first (by the time its host's clock gave it).

        One that cannot be read (a newer watcher's format, damage) stops nothing: it is left out,
        with one warning line naming it, and kept in `unreadable` for whoever would delete data.
        """
        ids = self.snapshot_ids()
        unreadable: dict[str, str] = {}
        for snapshot_id in ids:
            if snapshot_id in self.decoded:
                continue
            if snapshot_id in self.unreadable:
                unreadable[snapshot_id] = self.unreadable[snapshot_id]
                continue
            try:
                self.decoded[snapshot_id] = self.load_snapshot(snapshot_id, cached=True)
            except SnapshotNotFoundError:
                continue  # forgotten since it was listed
            except IntegrityError as error:
                log.warning("%s: left out", error)
                unreadable[snapshot_id] = str(error)
        self.unreadable = unreadable
        snapshots = [self.decoded[snapshot_id] for snapshot_id in ids if snapshot_id in self.decoded]
        self.cache.keep_snapshots(set(ids))
        self.cache.commit()
        return sorted(snapshots, key=lambda snapshot: (snapshot.time, snapshot.id))

    def find_snapshot(self, reference: str) -> Snapshot:
        """`latest`, a full id, or a unique prefix of one."""
        if reference == "latest":
            return self.latest()
        ids = self.snapshot_ids()
        matches = [snapshot_id for snapshot_id in ids if snapshot_id.startswith(reference)]
        if reference in ids:
            matches = [reference]
        if not matches:
            raise SnapshotNotFoundError(f"no snapshot matches {reference!r}")
        if len(matches) > 1:
            raise SnapshotNotFoundError(f"{reference!r} matches {len(matches)} snapshots; give more of the id")
        return self.load_snapshot(matches[0], cached=True)

    def latest(self, now: datetime | None = None) -> Snapshot:
        """The newest snapshot that can be read, passing over those dated in the future (a wrong clock),
        with a warning, unless there is no other."""
        snapshots = self.list_snapshots()
        if not snapshots:
            more = f" ({len(self.unreadable)} cannot be read)" if self.unreadable else ""
            raise SnapshotNotFoundError(f"the repository has no snapshot yet{more}")
        now = now or datetime.now(UTC)
        sensible = [snapshot for snapshot in snapshots if not dated_in_future(snapshot, now)]
        if not sensible:
            return snapshots[-1]
        for snapshot in snapshots:
            if dated_in_future(snapshot, now):
                log.warning("snapshot %s is dated %s, in the future (a wrong clock?): not taken as latest",
                            snapshot.id, snapshot.time_text)
        return sensible[-1]

    def confirm_stored(self, writer: BlobWriter) -> None:
        """Before a snapshot is saved: no `forget` removed what it relies on meanwhile.

        Locks keep `forget` away from a running backup; this is the defence should one not (a
        clock far ahead, a lock deleted by hand). An index read at the start that is gone from
        the listing means a `forget` rewrote the index; a pack this run wrote that is gone means
        one removed it (its rewritten index may be byte for byte the old one, so both are looked
        at). Cost when nothing happened: one listing of index/ and one stat per pack written.
        The indexes this run wrote are replaced by one naming only its packs that still exist;
        an index it knew is then gone, so the next attempt reads the whole index afresh and
        uploads again what is missing.
        """
        with self.lock:
            listed = set(self.listed("index"))
            missing = self._missing_packs(writer.written_packs)
        vanished = self.indexes - listed
        if not vanished and not missing:
            return
        if missing:
            remaining = [entry for entry in writer.indexed if entry[0] not in missing]
            # may be byte for byte one of ours: never delete it
            replacement = self.commit_index(remaining) if remaining else set()
            for index_id in sorted(writer.index_ids - replacement):
                try:
                    with self.lock:
                        self.backend.delete(f"index/{index_id}")
                except NotFoundError:
                    pass  # the forget removed it
        raise PacksRemovedError(
            f"a forget removed data this backup relies on while it ran ({len(missing)} of its "
            f"{len(writer.written_packs)} new packs, {len(vanished)} index files): no snapshot saved; "
            "the next run reads the index again and uploads what is missing (a forget must not run "
            "while a backup holds its lock: are the clocks of these machines far apart?)")

    def _missing_packs(self, packs: set[str]) -> set[str]:
        if len(packs) > STAT_PACKS_AT_MOST:
            return packs - set(self.listed("packs"))
        return {pack for pack in packs if not self.backend.exists(pack_key(pack))}

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """The commit point of a backup: written last, atomically, once all it names exists."""
        data = self.codec.seal("snapshot", snapshot.id, encode_snapshot(snapshot))
        with self.lock:
            self.backend.put_bytes(f"snapshots/{snapshot.id}", data)
        self.cache.put_snapshot(snapshot.id, data)

    def forget_snapshot(self, snapshot_id: str) -> None:
        """Take back a snapshot just saved that names data found gone (the cache drops it at the next listing)."""
        with self.lock:
            self.backend.delete(f"snapshots/{snapshot_id}")

    # -- this host's last snapshot, recorded in the local state ---------------------------------

    def _record_path(self) -> Path | None:
        if self.state_dir is None or self.config is None:
            return None
        return self.state_dir / "repos" / self.config.id / "last-snapshot.json"

    def recorded_snapshot(self, host: str, sources: tuple[str, ...]) -> str | None:
        """The id of the last snapshot this state folder recorded for `host` and `sources`, if any."""
        path = self._record_path()
        if path is None:
            return None
        try:
            record = json.loads(path.read_bytes())
            if record["host"] == host and record["sources"] == sorted(sources):
                return str(record["snapshot"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("the record of the last snapshot in %s cannot be read (%s): passed over", path, error)
        return None

    def record_snapshot(self, host: str, sources: tuple[str, ...], snapshot_id: str) -> None:
        """Record `snapshot_id` as this host's last: the one an event-driven run takes untouched entries from.

        A backup records its snapshot before saving it: a record naming a snapshot that never came is
        only passed over. A record that cannot be written must not stay behind naming an older snapshot
        (a later run would take stale entries from it): it is removed, and if even that fails the run
        stops here, before it saves anything.
        """
        path = self._record_path()
        if path is None:
            return
        data = json.dumps({"host": host, "sources": sorted(sources), "snapshot": snapshot_id}).encode()
        try:
            write_file(path, data)
        except OSError as error:
            reason = error.strerror or str(error)
            try:
                path.unlink(missing_ok=True)
            except OSError:
                raise RepositoryError(f"cannot record the last snapshot in {path}: {reason}") from None
            log.warning("cannot record the last snapshot in %s (%s): the next run walks every source", path, reason)

    # -- writing -----------------------------------------------------------------------------

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def commit_index(self, entries: list[tuple[str, int, list[BlobEntry]]]) -> set[str]:
        """Write index files naming `entries` (packs with their blobs); return their ids.

        At most INDEX_BLOBS blobs a file: `forget` names every pack again, and one file for a
        repository of millions of blobs would outgrow what a reader accepts (INDEX_LIMIT)."""
        written: set[str] = set()
        group: list[tuple[str, int, list[BlobEntry]]] = []
        blobs = 0
        for entry in entries:
            if group and blobs + len(entry[2]) > INDEX_BLOBS:
                written.add(self._write_index_file(group))
                group, blobs = [], 0
            group.append(entry)
            blobs += len(entry[2])
        if group:
            written.add(self._write_index_file(group))
        return written

    def _write_index_file(self, entries: list[tuple[str, int, list[BlobEntry]]]) -> str:
        document = {
            "version": self.codec.version,
            "packs": [
                {"id": pack_id, "size": size, "blobs": [blob.as_row() for blob in blobs]}
                for pack_id, size, blobs in entries
            ],
        }
        data = self.codec.seal("index", "", json.dumps(document, separators=(",", ":")).encode())
        index_id = digest(data)
        with self.lock:
            self.backend.put(f"index/{index_id}", io.BytesIO(data))
        self.cache.put_blob(index_id, "index", data)
        self._add_index(index_id, data)
        return index_id


class BlobWriter:
    """Packs new blobs and uploads packs in background threads while the caller reads files.

    Blobs become part of the index only when their pack is uploaded and an index naming it is
    written (every few packs, and at `finish`), so an interrupted run keeps what it indexed. A
    backend that takes several uploads at once (S3: an HTTP request each) gets as many threads;
    one connection (SFTP, FTP) gets one, its uploads under the repository's lock.
    """

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.pack_size = repository.config.pack_size if repository.config else PACK_TARGET
        self.codec = repository.codec
        self.builder = PackBuilder(self.codec)
        self.pending: set[str] = set()
        self.bytes_added = 0
        self.uploaded: list[tuple[str, int, list[BlobEntry]]] = []
        self.written_packs: set[str] = set()
        self.indexed: list[tuple[str, int, list[BlobEntry]]] = []  # what this writer's indexes name
        self.index_ids: set[str] = set()
        self.queue: queue.Queue[PackBuilder | None] = queue.Queue()
        self.workers = max(1, repository.backend.concurrent_puts)
        self.in_flight = threading.BoundedSemaphore(self.workers)  # a pack's slot, freed once uploaded
        self.done = threading.Lock()  # the bookkeeping of uploaded packs, from any upload thread
        self.error: BaseException | None = None
        self.aborted = False  # set by `abort`: an upload that ends later is indexed by nothing
        self.threads = [threading.Thread(target=self._upload_loop, name=f"pack-upload-{number}", daemon=True)
                        for number in range(self.workers)]
        for thread in self.threads:
            thread.start()

    def known(self, blob_id: str) -> bool:
        return blob_id in self.pending or self.repository.has_blob(blob_id)

    def add(self, blob_id: str, blob_type: str, data: bytes | memoryview) -> bool:
        """Store a blob unless the repository already has it; True if it was new."""
        if self.known(blob_id):
            return False
        self._raise_upload_error()
        self.builder.add_plain(blob_id, blob_type, data)  # encoded now, in this thread (see PackBuilder)
        self._added(blob_id)
        return True

    def add_stored(self, blob_id: str, blob_type: str, encoding: str, stored: bytes) -> None:
        """Pack an already encoded blob, even if another pack holds it (how `forget` repacks)."""
        self._raise_upload_error()
        if blob_id in self.pending:
            return
        self.builder.add(blob_id, blob_type, encoding, stored)
        self._added(blob_id)

    def _added(self, blob_id: str) -> None:
        self.pending.add(blob_id)
        if len(self.builder) >= self.pack_size:
            self._seal()

    def _seal(self) -> None:
        if not self.builder.items:
            return
        builder, self.builder = self.builder, PackBuilder(self.codec)
        self._put_in_queue(builder)  # finished (header, hash) on an upload thread, beside the scan

    def _put_in_queue(self, item: PackBuilder) -> None:
        """Hand a pack to the upload threads once one of them has a free slot."""
        while True:
            self._raise_upload_error()
            if self.in_flight.acquire(timeout=0.5):
                self.queue.put(item)
                return

    def _stop_threads(self) -> None:
        for _ in self.threads:
            self.queue.put(None)  # the queue is unbounded: packs are bounded by `in_flight`

    def _upload_loop(self) -> None:
        exclusive = self.workers == 1
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                self.in_flight.release()
                continue
            released = False
            try:
                pack_id, pieces, entries = item.finish_pieces()
                del item
                stream = PiecesReader(pieces)
                del pieces  # the stream holds them: freed when it is, right after the upload
                with self.repository.lock if exclusive else contextlib.nullcontext():
                    self.repository.backend.put(pack_key(pack_id), stream)
                size = stream.size
                del stream
                self.in_flight.release()  # its bytes are freed: the scan may hand over the next pack
                released = True
                with self.done:
                    if self.aborted:  # the run is over and its lock may be gone: index nothing more
                        continue
                    self.bytes_added += sum(entry.length for entry in entries)
                    self.uploaded.append((pack_id, size, entries))
                    self.written_packs.add(pack_id)
                    if len(self.uploaded) >= INDEX_EVERY_PACKS:
                        self._write_index()
            except BaseException as error:  # handed to the caller's thread by _raise_upload_error
                self.error = self.error or error
                if not released:
                    self.in_flight.release()

    def _write_index(self) -> None:
        entries, self.uploaded = self.uploaded, []
        if entries:
            self.index_ids |= self.repository.commit_index(entries)
            self.indexed += entries

    def _raise_upload_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def finish(self) -> None:
        """Upload what is left and index it; after this every added blob is in the repository."""
        self._seal()
        self._stop_threads()
        for thread in self.threads:
            thread.join()
        self._raise_upload_error()
        self._write_index()

    def abort(self) -> None:
        """Stop the upload threads without indexing what they were doing (the run failed)."""
        deadline = time.monotonic() + 5  # a stuck upload must not hold up a stopping daemon
        writing_index = not self.done.acquire(timeout=5)  # an index already being written may end
        self.aborted = True
        if not writing_index:
            self.done.release()
        self.error = self.error or RepositoryError("aborted")
        self._stop_threads()
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))


def iter_tree(repository: Repository, tree_id: str, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Every entry below a tree, depth first, with its absolute path; iterative, so any depth
    walks. Unbounded by itself: callers check the snapshot's expansion first."""
    stack = [(prefix, iter(repository.load_tree(tree_id)))]
    while stack:
        where, nodes = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        path = f"{where}/{node.name}"
        yield path, node
        if node.kind == "dir" and node.subtree:
            stack.append((path, iter(repository.load_tree(node.subtree))))


def count_entries(children: Callable[[str], tuple[int, list[str]]], tree_id: str, counts: dict[str, int]) -> int:
    """The entries below `tree_id`, a subtree counted as often as it is named, with each distinct
    tree asked of `children` (its entry count and its folders' trees) once; `counts` memoizes."""
    stack = [tree_id]
    pending: dict[str, tuple[int, list[str]]] = {}
    while stack:
        tree = stack[-1]
        if tree in counts:
            stack.pop()
        elif tree not in pending:
            pending[tree] = children(tree)
            stack.extend(subtree for subtree in pending[tree][1] if subtree not in counts)
        else:
            size, subtrees = pending.pop(tree)
            if any(subtree not in counts for subtree in subtrees):
                raise IntegrityError(f"tree {tree[:12]} contains itself")
            counts[tree] = size + sum(counts[subtree] for subtree in subtrees)
            stack.pop()
    return counts[tree_id]


def expansion_problem(snapshot: Snapshot, entries: int) -> str | None:
    """Why a snapshot whose tree expands to `entries` entries is refused, or None."""
    summary = snapshot.summary
    recorded = sum(count for count in (summary.files, summary.dirs) if isinstance(count, int) and count > 0)
    limit = min(MAX_ENTRIES, 2 * recorded + ENTRIES_MARGIN)
    if entries <= limit:
        return None
    return (f"snapshot {snapshot.id}: its trees expand to {entries} entries, more than the {limit} it may "
            f"hold (its summary records {summary.files} files and {summary.dirs} folders); not walked")
