"""A hostile or damaged repository (the server is not trusted): every command ends in one clear line.

Issue 12, items 8 and 9: the config's `id` names a folder of the state folder; trees that name
one subtree many times must not expand without bound; declared lengths and objects that never
end must not be read without bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit import test_cli

paths, run = test_cli.paths, test_cli.run  # the CLI tests' fixtures: a source tree backed up by `run`


def one_error(err: str) -> str:
    """The one `error:` line (a backup also logs the failure to the console before it)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.endswith(lines[0] + "\n"), err
    return lines[0]


# -- item 8: the config's id -------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["../../escaped", "<absolute>", "..", "a/b", "", "0" * 31, "0" * 33,
                                    "ABCDEF0123456789ABCDEF0123456789", "0123456789abcdef0123456789abcdeg",
                                    "x\n" * 20, 12345678901234567890123456789012, None, ["a"]])
@pytest.mark.parametrize("command", [["snapshots"], ["backup"], ["check"]])
def test_a_config_id_that_is_not_32_hex_digits_is_refused(run, paths, tmp_path, bad_id, command):
    run.ok("backup")
    config = Path(paths["repo"]) / "config"
    document = json.loads(config.read_bytes())
    document["id"] = str(tmp_path / "absolute") if bad_id == "<absolute>" else bad_id
    config.write_text(json.dumps(document))
    logs = tmp_path / "state" / "logs"  # a backup's run log is the one thing it may write
    before = sorted(str(path) for path in tmp_path.rglob("*") if logs not in path.parents)
    code, out, err = run(*command)
    assert code == 1, (out, err)
    assert "repository config" in one_error(err) and "id" in err
    after = sorted(str(path) for path in tmp_path.rglob("*") if logs not in path.parents)
    assert after == before, "nothing may be created anywhere"
