"""The benchmark data set: thousands of small files in nested folders plus a few large ones.

Deterministic (seeded) so that every tool in a run backs up the same bytes; incompressible
content, so no tool gains from compression the others lack.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def generate(root: Path, small_files: int = 5000, large_files: int = 3, large_mib: int = 64, seed: int = 1) -> int:
    """Write the data set under `root`; return its size in bytes."""
    rng = random.Random(seed)
    total = 0
    for index in range(small_files):
        folder = root / "small" / f"d{index // 100:03d}" / f"e{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.choice((200, 1500, 4000, 12_000, 40_000))
        (folder / f"file{index:05d}.dat").write_bytes(rng.randbytes(size))
        total += size
    (root / "large").mkdir(parents=True, exist_ok=True)
    for index in range(large_files):
        with open(root / "large" / f"big{index}.bin", "wb") as handle:
            for _ in range(large_mib):
                handle.write(rng.randbytes(1024 * 1024))
        total += large_mib * 1024 * 1024
    return total


def change_one_percent(root: Path, seed: int = 2) -> int:
    """Rewrite 1% of the small files and append to one large file; return how many files changed."""
    rng = random.Random(seed)
    files = sorted((root / "small").rglob("*.dat"))
    chosen = rng.sample(files, max(1, len(files) // 100))
    for path in chosen:
        path.write_bytes(rng.randbytes(path.stat().st_size))
    with open(sorted((root / "large").iterdir())[0], "ab") as handle:
        handle.write(rng.randbytes(1024 * 1024))
    return len(chosen) + 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=3)
    parser.add_argument("--large-mib", type=int, default=64)
    args = parser.parse_args()
    size = generate(args.root, args.small, args.large, args.large_mib)
    print(f"{args.root}: {size / 2**20:.1f} MiB")
