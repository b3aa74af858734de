"""docker/repository-password.sh, the compose stack's one-shot `repository-password` service, run here with
`sh` on a folder of its own (no engine needed): it makes a random password once and keeps it, writes the
one that .env gives, keeps a replaced one beside it, and never prints a password."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "docker" / "repository-password.sh"


def _run(path: Path, password: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "BACKUP_REPOSITORY_PASSWORD"}
    if password is not None:
        environment["BACKUP_REPOSITORY_PASSWORD"] = password
    return subprocess.run(["sh", str(SCRIPT), str(path)], env=environment, capture_output=True, text=True,
                          timeout=30, check=False)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_random_password_is_made_once_then_kept(tmp_path: Path) -> None:
    path = tmp_path / "password"
    made = _run(path)
    assert made.returncode == 0, made.stderr
    password = path.read_text()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password), password
    assert _mode(path) == 0o400
    assert "made a new random password" in made.stderr and "LOSING IT LOSES THE BACKUPS" in made.stderr
    assert password not in made.stdout + made.stderr

    kept = _run(path)
    assert kept.returncode == 0, kept.stderr
    assert path.read_text() == password
    assert "keeping the password" in kept.stderr and password not in kept.stdout + kept.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["password"]

    other = tmp_path / "other" / "password"
    other.parent.mkdir()
    assert _run(other).returncode == 0
    assert other.read_text() != password  # random, not a constant


def test_the_password_from_env_is_written_and_a_replaced_one_is_kept_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "password"
    assert _run(path).returncode == 0
    generated = path.read_text()

    given = "correct horse battery staple ü $HOME `x` 'q'"
    written = _run(path, given)
    assert written.returncode == 0, written.stderr
    assert path.read_text(encoding="utf-8") == given
    assert _mode(path) == 0o400
    assert given not in written.stdout + written.stderr and generated not in written.stdout + written.stderr
    replaced = [p for p in tmp_path.iterdir() if p.name.startswith("password.replaced-")]
    assert len(replaced) == 1, list(tmp_path.iterdir())
    assert replaced[0].read_text() == generated and _mode(replaced[0]) == 0o400
    assert replaced[0].name in written.stderr

    again = _run(path, given)  # every start of the stack: the same password, nothing replaced
    assert again.returncode == 0, again.stderr
    assert "the same as the one kept" in again.stderr
    assert path.read_text(encoding="utf-8") == given
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["password", replaced[0].name])

    unset = _run(path, "")  # BACKUP_REPOSITORY_PASSWORD= in .env, as env.example has it: keep the file
    assert unset.returncode == 0 and path.read_text(encoding="utf-8") == given


def test_the_first_password_from_env_replaces_nothing(tmp_path: Path) -> None:
    path = tmp_path / "password"
    written = _run(path, "s3cret")
    assert written.returncode == 0, written.stderr
    assert path.read_text() == "s3cret" and _mode(path) == 0o400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["password"]


def test_a_missing_folder_fails_and_says_why(tmp_path: Path) -> None:
    result = _run(tmp_path / "absent" / "password")
    assert result.returncode == 1
    assert "is the repository-password volume mounted there?" in result.stderr
