"""A head start on scrypt, begun before the rest of watcher is imported (standard library only here).

Opening an encrypted repository costs one scrypt derivation (~0.5 s, see crypto.KDF_SECONDS).
`Repository.start_unlock` already runs it beside connecting; importing watcher (paramiko,
cryptography, zstandard: ~0.3 s) came before that, so a short command such as a no-change
`watcher backup` or a restore waited for both one after the other. The `watcher` command's entry
point (watcher/launch.py) calls `start` first: when the environment names the password and the
state folder, and that folder holds exactly one remembered key file (targets/*.key, written by
`Repository._remember_key`), its scrypt starts in a thread while the imports run (scrypt releases
the GIL). `crypto.KdfParams.derive` then takes the result (`take`) when it asks for the very same
password, salt and parameters; anything else (another password, key or folder, a damaged record)
only means no head start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

# The bounds crypto.decode_key_file enforces (crypto.SCRYPT_MEMORY_MAX, SCRYPT_WORK_MAX, KEY_SIZE):
# a record in the state folder asks for no more than a key file may.
_MEMORY_MAX = 256 * 1024 * 1024
_WORK_MAX = 1 << 25
_KEY_SIZE = 32

# The commands that open a repository first thing (not `health`, run every few seconds by a container
# engine, nor `doctor`, which may not get that far): the head start costs the others 64 MiB and a core.
OPENING = frozenset({"backup", "restore", "snapshots", "ls", "diff", "check", "forget", "key", "run"})

_Inputs = tuple[str, bytes, int, int, int]  # password, salt, n, r, p
_started: dict[_Inputs, tuple[threading.Thread, list[bytes]]] = {}
_guard = threading.Lock()


def _password(environ: Mapping[str, str]) -> str | None:
    """BACKUP_REPOSITORY_PASSWORD as config.py reads it (the variable, or its _FILE's first line ends)."""
    path = environ.get("BACKUP_REPOSITORY_PASSWORD_FILE", "").strip()
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n") or None
        except (OSError, UnicodeDecodeError):
            return None
    return environ.get("BACKUP_REPOSITORY_PASSWORD") or None


def _inputs(record: Path, password: str) -> _Inputs | None:
    """The scrypt inputs of the key file a record holds, within a key file's bounds."""
    try:
        document = json.loads(json.loads(record.read_bytes())["file"])
        n, r, p = (document[name] for name in ("n", "r", "p"))
        salt = base64.b64decode(document["salt"], validate=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(type(value) is int and value > 0 for value in (n, r, p)) or n & (n - 1):
        return None
    if 128 * n * r > _MEMORY_MAX or n * r * p > _WORK_MAX or not 16 <= len(salt) <= 64:
        return None
    return password, salt, n, r, p


def start(environ: Mapping[str, str], arguments: Sequence[str]) -> None:
    """Start deriving the key of the one remembered key file, if the command line (`watcher`'s
    arguments) opens a repository and the environment names the password and the state folder."""
    if any(argument.startswith(("--env-file", "-h", "--help")) for argument in arguments):
        return  # another environment (a file the CLI reads), or no command at all
    if next((argument for argument in arguments if not argument.startswith("-")), None) not in OPENING:
        return
    password, state = _password(environ), environ.get("BACKUP_STATE_DIR", "").strip()
    if not password or not state:
        return
    try:
        records = list((Path(state).expanduser() / "targets").glob("*.key"))
    except OSError:
        return
    inputs = _inputs(records[0], password) if len(records) == 1 else None
    if inputs is None:
        return
    result: list[bytes] = []

    def derive() -> None:
        _, salt, n, r, p = inputs
        result.append(hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_KEY_SIZE,
                                     maxmem=_MEMORY_MAX + 16 * 1024 * 1024))

    thread = threading.Thread(target=derive, name="key-derive", daemon=True)
    with _guard:
        _started[inputs] = (thread, result)
    thread.start()


def take(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes | None:
    """The derived key for exactly these inputs if `start` began it (waiting for it), once; else None."""
    if dklen != _KEY_SIZE:
        return None
    with _guard:
        started = _started.pop((password, salt, n, r, p), None)
    if started is None:
        return None
    thread, result = started
    thread.join()
    return result[0] if result else None


def forget() -> None:
    """Drop what was started and not taken (tests; a process that will not open that repository)."""
    with _guard:
        _started.clear()


__all__ = ["forget", "start", "take"]
