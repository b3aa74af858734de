"""Human-readable figures, the same in the terminal, the logs and the mails."""

from __future__ import annotations


def format_size(value: float) -> str:
    """Bytes in binary units: '900 B', '1.5 KiB', '3.2 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
