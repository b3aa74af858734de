"""The `watcher` command: a head start on the repository key (watcher.early_kdf), then the CLI.

Kept apart from watcher.cli so that nothing heavy is imported before the head start begins.
"""

from __future__ import annotations

import os
import sys

from watcher import early_kdf


def run() -> None:
    early_kdf.start(os.environ, sys.argv[1:])
    from watcher.cli import run as cli_run

    cli_run()
