"""Writing one benchmark's section into docs/BENCHMARKS.md, leaving the others as they are."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def write_section(heading: str, body: str, path: Path = DOCS) -> None:
    """Replace the section under `heading` (up to the next `## ` heading) by `body`, or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(f"\n{heading}\n")
    if start < 0:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{body.strip()}\n"
    else:
        after = start + len(heading) + 2
        end = text.find("\n## ", after)
        tail = text[end:] if end >= 0 else "\n"
        text = text[:after] + "\n" + body.strip() + "\n" + tail
    path.write_text(text)
