"""Human-readable figures and names, the same in the terminal, the logs and the mails."""

from __future__ import annotations

_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def format_size(value: float) -> str:
    """Bytes in binary units: '900 B', '1.5 KiB', '3.2 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _escape(char: str) -> str:
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, kept by `surrogateescape`
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """`text` safe to print on a terminal: one line, no escape sequence, nothing invisible.

    A name may hold a newline, a terminal escape or bytes that are not UTF-8. Shown raw, it
    forges lines or drives the terminal. So a backslash becomes `\\\\`; newline, carriage return
    and tab `\\n`, `\\r`, `\\t`; other ASCII controls and non-UTF-8 bytes `\\xNN`; any other
    character Python does not call printable (C1 controls, format and separator characters,
    surrogates, unassigned) `\\uNNNN` or `\\UNNNNNNNN`. Unambiguous: each escape starts with a
    backslash and every real backslash is doubled. `--json` output needs none of this.
    """
    if text.isprintable() and "\\" not in text:
        return text  # the common case, at the cost of one scan
    return "".join(_escape(char) if not char.isprintable() or char == "\\" else char for char in text)
