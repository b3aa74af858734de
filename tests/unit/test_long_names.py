"""Names of NAME_MAX bytes made of multi-byte characters back up and restore byte for byte (file://)."""

from __future__ import annotations

import os

import pytest

from tests.long_names import LONG_NAMES, NAME_MAX, assert_same_names, make_long_names
from watcher.actions import restore
from watcher.cli import main


@pytest.mark.parametrize("label", sorted(LONG_NAMES))
def test_restore_temporary_name_fits_name_max_and_splits_no_character(label):
    name = LONG_NAMES[label]
    temp = restore.restore_temp_name(name)
    encoded = os.fsencode(temp)
    assert len(encoded) <= NAME_MAX
    kept = temp[1 : temp.index(".watcher-restore-")]
    assert name.startswith(kept), "the temporary name still says which file it is"
    budget = NAME_MAX - len(".") - len(".watcher-restore-12345678")
    assert len(os.fsencode(kept)) <= budget
    next_character = name[len(kept)]  # whole characters only: never the first bytes of one
    assert len(os.fsencode(kept + next_character)) > budget, "cut as late as the limit allows"


def test_short_names_are_kept_whole():
    assert restore.restore_temp_name("a.txt").startswith(".a.txt.watcher-restore-")


def test_long_names_back_up_and_restore_byte_for_byte(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    make_long_names(source)
    env = {"BACKUP_SOURCES": str(source), "BACKUP_TARGET": f"file://{tmp_path}/repo",
           "BACKUP_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}
    assert main(["backup"], env) == 0
    code = main(["restore", "latest", "--to", str(tmp_path / "out")], env)
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert_same_names(source, tmp_path / "out" / str(source).lstrip("/"))
