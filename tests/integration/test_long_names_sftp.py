"""Names of NAME_MAX bytes made of multi-byte characters back up and restore byte for byte over SFTP."""

from __future__ import annotations

import pytest

from tests.integration.test_cli_sftp import run, sftp_env
from tests.long_names import assert_same_names, make_long_names

pytestmark = pytest.mark.timeout(120)


def test_long_names_over_sftp(sshd_server, tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    make_long_names(source)
    env = sftp_env(sshd_server, source, tmp_path)
    code, out, err = run(capsys, ["backup"], env)
    assert code == 0, out + err
    code, out, err = run(capsys, ["restore", "latest", "--to", str(tmp_path / "out")], env)
    assert code == 0, out + err
    assert_same_names(source, tmp_path / "out" / str(source).lstrip("/"))
