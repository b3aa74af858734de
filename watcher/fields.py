"""Checks for the values decoded from repository objects (pure: imports nothing of ours).

The server is not trusted, and JSON lets any value stand anywhere: `1e999` (infinity), 2**70,
`true` where a number belongs, a list where an object does. Every field a decoder reads goes
through one of these checks, so a crafted value is refused where it is read, with a line that
names the field, instead of surfacing later as a traceback from `os.utime`, a sort or a print.
Each check returns the value it accepted or raises `FieldError`; the decoder that called it
says which object was bad.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

INT64_MAX = 2**63 - 1  # file sizes, offsets, counts
ID_MAX = 2**32 - 2  # uid and gid (2**32 - 1 is -1, "no change", to chown)
MODE_MAX = 0o7777  # permission bits only
# Times a datetime can show: years 1 to 9999 UTC, in nanoseconds (file times) and seconds (lock times).
SECONDS_MIN, SECONDS_MAX = -62135596800, 253402300799
NS_MIN, NS_MAX = SECONDS_MIN * 10**9, SECONDS_MAX * 10**9

_EARLIEST, _LATEST = datetime(1, 1, 3, tzinfo=UTC), datetime(9999, 12, 29, tzinfo=UTC)
_HEX_ID = re.compile(r"[0-9a-f]{64}")
_HEX_IDS = re.compile(r"(?:[0-9a-f]{64},)*[0-9a-f]{64}")
_SNAPSHOT_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")


class FieldError(ValueError):
    """A decoded value that is not what the format says; `str()` names the field."""


def shown(value: object) -> str:
    """A value as it may appear in an error line: short, one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def load_json(data: bytes) -> Any:
    """JSON, refusing what json itself would crash on (nesting deeper than the interpreter's stack)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise FieldError("nested too deeply") from None


def reason(error: Exception) -> str:
    """The part of an error line that says what is wrong with the object."""
    if isinstance(error, KeyError):
        return f"{error.args[0]}: missing"
    if isinstance(error, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(error, json.JSONDecodeError):
        return f"not JSON ({error.msg})"
    return str(error)


def integer(value: object, what: str, low: int = 0, high: int = INT64_MAX) -> int:
    """An int (never a bool or a float) within [low, high]."""
    if type(value) is not int or not low <= value <= high:
        if type(value) is int:
            raise FieldError(f"{what}: {value} is out of range {low}..{high}")
        raise FieldError(f"{what}: {shown(value)} is not an integer")
    return value


def number(value: object, what: str, low: float, high: float) -> float:
    """A finite int or float within [low, high] (json reads 1e999 as infinity)."""
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:  # type: ignore[arg-type]
        raise FieldError(f"{what}: {shown(value)} is not a number in {low}..{high}")
    return float(value)  # type: ignore[arg-type]


def boolean(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise FieldError(f"{what}: {shown(value)} is not true or false")
    return value


def mapping(value: object, what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise FieldError(f"{what}: not a JSON object")
    return value


def array(value: object, what: str, size: int | None = None) -> list[Any]:
    if type(value) is not list or (size is not None and len(value) != size):
        raise FieldError(f"{what}: not a list" + ("" if size is None else f" of {size} items"))
    return value


def choice(value: object, what: str, allowed: Iterable[object]) -> Any:
    if type(value) is not str or value not in allowed:
        raise FieldError(f"{what}: {shown(value)} is not one of {', '.join(map(str, allowed))}")
    return value


def version(document: dict[str, Any], expected: int, what: str) -> None:
    value = document.get("version")
    if type(value) is not int or value != expected:
        raise FieldError(f"unknown {what} version {shown(value)}")


def text(value: object, what: str) -> str:
    """A string that maps to bytes: no lone surrogate but those of undecodable bytes (surrogateescape)."""
    if type(value) is not str:
        raise FieldError(f"{what}: {shown(value)} is not a string")
    if not value.isascii():
        try:
            value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise FieldError(f"{what}: {shown(value)} holds a character no file system name can") from None
    return value


def path_text(value: object, what: str) -> str:
    """A path or link target: a non-empty string of file system bytes without NUL."""
    value = text(value, what)
    if not value or "\0" in value:
        raise FieldError(f"{what}: {shown(value)} is empty or holds NUL")
    return value


def name(value: object, what: str = "name") -> str:
    """One path component: never empty, `.` or `..`, never holding `/` or NUL."""
    value = text(value, what)
    if value in ("", ".", "..") or "/" in value or "\0" in value:
        raise FieldError(f"unsafe entry name {shown(value)}")
    return value


def hex_id(value: object, what: str) -> str:
    """A SHA-256 id: 64 lowercase hex digits (ids become keys and paths: nothing else may pass)."""
    if type(value) is not str or not _HEX_ID.fullmatch(value):
        raise FieldError(f"{what}: {shown(value)} is not an id")
    return value


def hex_ids(value: object, what: str) -> tuple[str, ...]:
    """A list of ids, matched as one string: the hot part of reading a tree (a file lists its chunks).

    Joined with commas, n ids are exactly 65n - 1 characters of the pattern; an item holding a
    comma or of another length changes that count.
    """
    items = array(value, what)
    try:
        joined = ",".join(items)
    except TypeError:
        joined = ""
    if items and (len(joined) != 65 * len(items) - 1 or not _HEX_IDS.fullmatch(joined)):
        for item in items:
            hex_id(item, what)  # says which one is wrong
        raise FieldError(f"{what}: not a list of ids")
    return tuple(items)


def snapshot_id(value: object, what: str) -> str:
    if type(value) is not str or not _SNAPSHOT_ID.fullmatch(value):
        raise FieldError(f"{what}: {shown(value)} is not a snapshot id")
    return value


def utc_time(value: object, what: str) -> datetime:
    """An ISO 8601 time with its zone, as a UTC datetime (a time without a zone cannot be ordered).

    Two days short of datetime's limits, so that showing it in any local time cannot overflow.
    """
    if type(value) is not str:
        raise FieldError(f"{what}: {shown(value)} is not a time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        utc = moment.astimezone(UTC) if moment.utcoffset() is not None else None
    except (ValueError, OverflowError) as error:
        raise FieldError(f"{what}: {shown(value)} is not a time ({error})") from None
    if utc is None:
        raise FieldError(f"{what}: {shown(value)} has no time zone")
    if not _EARLIEST <= utc <= _LATEST:
        raise FieldError(f"{what}: {shown(value)} is out of range")
    return utc
