"""The real CLI, in process: `watcher.cli.main(argv, environ)`, its output and exit statuses."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import stat
import sys
from pathlib import Path

import pytest

from tests.unit.test_config import BAD_CONFIG, PASSWORD, base_env, fill
from watcher import cli, progress
from watcher.pack import parse_header

ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
UTC_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
MTIME = 1_600_000_000_123_456_789  # a fixed past time, with nanoseconds


@pytest.fixture(autouse=True)
def restore_root_logger():
    """`main` installs a console handler on the root logger: take it away after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


class Runner:
    def __init__(self, capsys, env: dict[str, str]) -> None:
        self.capsys = capsys
        self.env = env

    def __call__(self, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli.main(list(argv), dict(self.env if env is None else env))
        out, err = self.capsys.readouterr()
        assert "Traceback" not in out + err
        return int(code), out, err

    def ok(self, *argv: str) -> str:
        code, out, err = self(*argv)
        assert code == 0, (code, out, err)
        return out

    def snapshot_ids(self) -> list[str]:
        return [snapshot["id"] for snapshot in json.loads(self.ok("snapshots", "--json"))]


def make_tree(src: Path) -> None:
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_text("hello\n")
    (src / "a.txt").chmod(0o640)
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 40 + os.urandom(1000))
    (src / "sub" / "b.bin").chmod(0o600)
    (src / "sub" / "deeper" / "c.txt").write_text("deep\n")
    (src / "zero").write_bytes(b"")
    (src / "link").symlink_to("a.txt")
    (src / "sub" / "dangling").symlink_to("../nowhere/at/all")
    (src / "empty").chmod(0o750)
    for number, path in enumerate(sorted(src.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(path, ns=(MTIME + number, MTIME + number), follow_symlinks=False)
    os.utime(src, ns=(MTIME, MTIME))


def regular_bytes(src: Path) -> int:
    return sum(path.stat().st_size for path in src.rglob("*") if path.is_file() and not path.is_symlink())


@pytest.fixture
def paths(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    return {"src": str(src), "tmp": str(tmp_path), "repo": str(tmp_path / "repo")}


@pytest.fixture
def run(capsys, paths):
    env = {**base_env(paths), "BACKUP_HOST": "test-host"}
    return Runner(capsys, env)


@pytest.fixture
def backed_up(run):
    out = run.ok("backup")
    assert re.search(r"^snapshot \d{8}T\d{6}Z-[0-9a-f]{8} saved", out, re.M), out
    return run


def restored_root(to: Path, src: str) -> Path:
    return to / Path(src).relative_to("/")


def describe_tree(root: Path) -> dict[str, tuple]:
    """Everything restore promises to reproduce, for every entry below `root`."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        relative = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            found[relative] = ("link", os.readlink(path), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            found[relative] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid)
        else:
            found[relative] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns,
                               st.st_uid, st.st_gid)
    return found


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


# -- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "variable"), BAD_CONFIG)
def test_config_error_exits_2_naming_the_variable(capsys, tmp_path, overrides, variable):
    paths = {"src": str(tmp_path / "src"), "tmp": str(tmp_path), "file": str(tmp_path / "regular"),
             "secret": str(tmp_path / "secret")}
    (tmp_path / "src" / "sub").mkdir(parents=True)
    (tmp_path / "regular").write_text("x")
    (tmp_path / "secret").write_text(PASSWORD)
    (tmp_path / "link-to-repo").symlink_to(tmp_path / "repo")
    env = {**base_env(paths), **fill(overrides, paths)}
    code, out, err = Runner(capsys, env)("backup")
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), err
    assert any(line.startswith(f"error: {variable}:") for line in lines), err
    assert PASSWORD not in err
    assert not (tmp_path / "repo").exists(), "nothing may be done with a bad configuration"


def test_all_config_errors_are_printed_one_per_line(run):
    env = {**run.env, "BACKUP_RETRIES": "0", "MAIL_ON": "x", "BACKUP_TARGET": "nope://x"}
    code, _out, err = run("snapshots", env=env)
    assert code == 2
    lines = err.splitlines()
    assert all(line.startswith("error: ") for line in lines)
    assert sorted(line.split(":")[1].strip() for line in lines) == ["BACKUP_RETRIES", "BACKUP_TARGET", "MAIL_ON"]


def test_missing_env_file_exits_2(run, tmp_path):
    code, _out, err = run("--env-file", str(tmp_path / "missing.env"), "snapshots")
    assert code == 2
    assert err.startswith("error: --env-file:") and len(err.splitlines()) == 1


def test_env_file_is_used(run, tmp_path, paths):
    env_file = tmp_path / "watcher.env"
    env_file.write_text(f"BACKUP_TARGET=file://{paths['repo']}\nBACKUP_STATE_DIR={tmp_path}/state\n")
    run.ok("backup")
    code, out, _err = run("--env-file", str(env_file), "snapshots", "--json", env={})
    assert code == 0 and len(json.loads(out)) == 1


def test_dotenv_in_working_directory_is_used(run, paths, tmp_path):
    run.ok("backup")
    Path(".env").write_text(f"BACKUP_TARGET=file://{paths['repo']}\nBACKUP_STATE_DIR={tmp_path}/state\n")
    code, out, _err = run("snapshots", "--json", env={})
    assert code == 0 and len(json.loads(out)) == 1


def test_progress_bar_decision_follows_the_current_stderr(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert progress.wanted() is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.wanted() is False


# -- argument parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_of_each_command(capsys, command):
    with pytest.raises(SystemExit) as caught:
        cli.main([command, "--help"], {})
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: watcher {command}")


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--help"], {})
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command in out


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["ls"], ["restore", "latest"], ["diff", "one"],
                                  ["snapshots", "--bogus"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv, {})
    assert caught.value.code == 2
    captured = capsys.readouterr()
    assert "usage: watcher" in captured.err
    assert "Traceback" not in captured.err


def test_unknown_command_names_it(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["frobnicate"], {})
    assert caught.value.code == 2
    assert "frobnicate" in capsys.readouterr().err


# -- backup, snapshots, ls ------------------------------------------------------------------------


def test_backup_then_no_change(backed_up):
    code, out, _err = backed_up("backup")
    assert code == 0
    assert "no change" in out
    assert len(backed_up.snapshot_ids()) == 1


def test_snapshots_table(backed_up):
    (snapshot_id,) = backed_up.snapshot_ids()
    out = backed_up.ok("snapshots")
    assert snapshot_id in out
    assert "test-host" in out


def test_snapshots_json(backed_up, paths):
    src = Path(paths["src"])
    (src / "new.txt").write_text("more\n")
    backed_up.ok("backup")
    snapshots = json.loads(backed_up.ok("snapshots", "--json"))
    assert len(snapshots) == 2
    for snapshot in snapshots:
        assert {"id", "time", "host", "files", "bytes", "bytes_added"} <= snapshot.keys()
        assert ID.match(snapshot["id"]), snapshot["id"]
        assert UTC_TIME.match(snapshot["time"]), snapshot["time"]
        assert snapshot["host"] == "test-host"
        assert isinstance(snapshot["files"], int) and isinstance(snapshot["bytes"], int)
    first, second = snapshots
    assert first["time"] <= second["time"], "oldest first"
    regular = 6  # a.txt run.sh zero sub/b.bin sub/deeper/c.txt new.txt
    assert first["files"] in (regular - 1, regular - 1 + 2)  # symlinks may count as files
    assert first["bytes"] == regular_bytes(src) - 5
    assert second["bytes"] == regular_bytes(src)
    assert first["bytes_added"] >= first["bytes"]
    assert 0 < second["bytes_added"] < first["bytes_added"], "unchanged content is not stored again"


def test_ls_latest(backed_up, paths):
    src = paths["src"]
    lines = backed_up.ok("ls", "latest").splitlines()
    listed = {line.split(" -> ")[0].split()[-1] for line in lines}
    for relative in ("a.txt", "run.sh", "zero", "empty", "link", "sub", "sub/b.bin", "sub/deeper",
                     "sub/deeper/c.txt", "sub/dangling"):
        assert f"{src}/{relative}" in listed
    assert src in listed
    assert any(line.endswith(f"{src}/link -> a.txt") for line in lines)
    assert any(line.startswith("-rwxr-xr-x") and line.endswith(f"{src}/run.sh") for line in lines)


def test_ls_latest_path(backed_up, paths):
    src = paths["src"]
    listed = [line.split(" -> ")[0].split()[-1] for line in backed_up.ok("ls", "latest", f"{src}/sub").splitlines()]
    assert sorted(listed) == sorted(
        f"{src}/sub{rest}" for rest in ("", "/b.bin", "/deeper", "/deeper/c.txt", "/dangling")
    )
    one = backed_up.ok("ls", "latest", f"{src}/a.txt").splitlines()
    assert len(one) == 1 and one[0].endswith(f"{src}/a.txt")


def test_ls_json(backed_up, paths):
    src = paths["src"]
    entries = {entry["path"]: entry for entry in json.loads(backed_up.ok("ls", "latest", src, "--json"))}
    assert entries[f"{src}/a.txt"]["type"] == "file"
    assert entries[f"{src}/a.txt"]["size"] == 6
    assert entries[f"{src}/sub"]["type"] == "dir"
    assert entries[f"{src}/link"]["type"] == "symlink"
    assert entries[f"{src}/link"]["target"] == "a.txt"
    assert entries[f"{src}/sub/dangling"]["target"] == "../nowhere/at/all"


def test_ls_of_a_missing_snapshot(backed_up):
    code, out, err = backed_up("ls", "19990101T000000Z-deadbeef")
    assert code == 1
    assert out == ""
    assert len(error_lines(err)) == 1


def test_ls_of_a_missing_path(backed_up, paths):
    code, out, err = backed_up("ls", "latest", f"{paths['src']}/no/such/file")
    assert code == 1
    assert out == ""
    assert len(error_lines(err)) == 1 and "no/such/file" in err


def test_ls_below_a_file_is_a_missing_path(backed_up, paths):
    code, _out, err = backed_up("ls", "latest", f"{paths['src']}/a.txt/below")
    assert code == 1
    assert len(error_lines(err)) == 1


# -- snapshot references --------------------------------------------------------------------------


def two_snapshots(run, src: Path) -> tuple[str, str]:
    run.ok("backup")
    (src / "a.txt").write_text("changed content\n")
    run.ok("backup")
    first, second = run.snapshot_ids()
    return first, second


def common_prefix(one: str, other: str) -> str:
    length = 0
    while length < min(len(one), len(other)) and one[length] == other[length]:
        length += 1
    return one[:length]


def shortest_unique_prefix(one: str, other: str) -> str:
    return one[: len(common_prefix(one, other)) + 1]


def test_snapshot_references(run, paths):
    first, second = two_snapshots(run, Path(paths["src"]))
    src = paths["src"]

    def size_of_a(reference: str) -> int:
        (entry,) = json.loads(run.ok("ls", reference, f"{src}/a.txt", "--json"))
        return entry["size"]

    assert size_of_a("latest") == len("changed content\n")
    assert size_of_a(first) == 6
    assert size_of_a(second) == len("changed content\n")
    assert size_of_a(shortest_unique_prefix(first, second)) == 6
    assert size_of_a(shortest_unique_prefix(second, first)) == len("changed content\n")

    ambiguous = common_prefix(first, second)
    assert ambiguous
    code, out, err = run("ls", ambiguous)
    assert code == 1 and out == ""
    assert len(error_lines(err)) == 1 and "2 snapshots" in err

    code, _out, err = run("ls", "not-a-snapshot")
    assert code == 1 and len(error_lines(err)) == 1


def test_latest_without_snapshots(run):
    run.ok("backup")
    for snapshot in Path(run.env["BACKUP_TARGET"][len("file://"):], "snapshots").iterdir():
        snapshot.unlink()
    code, _out, err = run("ls", "latest")
    assert code == 1 and len(error_lines(err)) == 1


# -- diff -------------------------------------------------------------------------------------------


def test_diff_shows_added_removed_changed(run, paths):
    src = Path(paths["src"])
    run.ok("backup")
    (src / "new.txt").write_text("new\n")
    (src / "sub" / "deeper" / "c.txt").unlink()
    (src / "a.txt").write_text("hello again\n")
    (src / "empty" / "now-full").mkdir()
    run.ok("backup")
    first, second = run.snapshot_ids()
    lines = run.ok("diff", first, second).splitlines()
    assert f"+ {src}/new.txt" in lines
    assert f"+ {src}/empty/now-full" in lines
    assert f"- {src}/sub/deeper/c.txt" in lines
    assert f"M {src}/a.txt" in lines
    assert f"M {src}/run.sh" not in lines and f"+ {src}/run.sh" not in lines
    reverse = run.ok("diff", second, first).splitlines()
    assert f"- {src}/new.txt" in reverse and f"+ {src}/sub/deeper/c.txt" in reverse
    same = run.ok("diff", first, first).splitlines()
    assert not [line for line in same if line[:2] in ("+ ", "- ", "M ")]


# -- restore ----------------------------------------------------------------------------------------


def test_restore_byte_for_byte(backed_up, paths, tmp_path):
    to = tmp_path / "restored"
    to.mkdir()
    (to / "unrelated.txt").write_text("leave me alone\n")
    out = backed_up.ok("restore", "latest", "--to", str(to))
    assert "restored" in out
    root = restored_root(to, paths["src"])
    assert describe_tree(root) == describe_tree(Path(paths["src"]))
    assert (to / "unrelated.txt").read_text() == "leave me alone\n"
    assert (root / "empty").is_dir() and not list((root / "empty").iterdir())
    assert os.readlink(root / "link") == "a.txt"


def test_restore_over_an_earlier_restore(backed_up, paths, tmp_path):
    to = tmp_path / "restored"
    backed_up.ok("restore", "latest", "--to", str(to))
    root = restored_root(to, paths["src"])
    (root / "a.txt").write_text("scribbled over\n")
    backed_up.ok("restore", "latest", "--to", str(to))
    assert describe_tree(root) == describe_tree(Path(paths["src"]))


@pytest.mark.parametrize("order", ["paths-after-to", "paths-before-to"])
def test_restore_given_paths_only(backed_up, paths, tmp_path, order):
    to = tmp_path / "part"
    src = paths["src"]
    wanted = [f"{src}/sub", f"{src}/a.txt"]
    if order == "paths-after-to":  # the order SPEC.md documents: restore SNAPSHOT --to DIR [PATH...]
        backed_up.ok("restore", "latest", "--to", str(to), *wanted)
    else:
        backed_up.ok("restore", "latest", *wanted, "--to", str(to))
    root = restored_root(to, src)
    assert (root / "sub" / "b.bin").read_bytes() == (Path(src) / "sub" / "b.bin").read_bytes()
    assert (root / "sub" / "deeper" / "c.txt").read_text() == "deep\n"
    assert (root / "a.txt").read_text() == "hello\n"
    assert not (root / "run.sh").exists()
    assert not (root / "empty").exists()
    assert not (root / "link").is_symlink()


@pytest.mark.parametrize("order", ["paths-after-to", "paths-before-to"])
def test_restore_of_a_path_not_in_the_snapshot(backed_up, paths, tmp_path, order):
    to = tmp_path / "none"
    missing = f"{paths['src']}/not-there"
    if order == "paths-after-to":
        code, _out, err = backed_up("restore", "latest", "--to", str(to), missing)
    else:
        code, _out, err = backed_up("restore", "latest", missing, "--to", str(to))
    assert code == 1
    assert len(error_lines(err)) == 1 and "not-there" in err
    assert not restored_root(to, paths["src"]).exists()


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_restore_into_a_file_is_one_error_line(backed_up, tmp_path, where):
    (tmp_path / "a-file").write_text("in the way\n")
    code, _out, err = backed_up("restore", "latest", "--to", str(tmp_path / where))
    assert code == 1
    assert len(error_lines(err)) == 1, err
    assert (tmp_path / "a-file").read_text() == "in the way\n"


def test_restore_never_follows_a_symlink_out_of_dir(backed_up, paths, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    to = tmp_path / "restored"
    to.mkdir()
    (to / Path(paths["src"]).parts[1]).symlink_to(outside)
    code, _out, _err = backed_up("restore", "latest", "--to", str(to))
    assert code == 1
    assert list(outside.iterdir()) == []


# -- check, and a damaged pack ------------------------------------------------------------------


def flip_a_data_byte(repo: Path) -> None:
    packs = sorted(path for path in (repo / "packs").rglob("*") if path.is_file())
    assert packs
    pack = packs[0]
    data = bytearray(pack.read_bytes())
    entry = next(entry for entry in parse_header(pack.name, bytes(data)) if entry.type == "data")
    data[entry.offset + entry.length // 2] ^= 0x01
    pack.write_bytes(bytes(data))


def test_check(backed_up):
    assert "sound" in backed_up.ok("check")
    assert "sound" in backed_up.ok("check", "--read-data")


def test_flipped_byte_in_a_pack(backed_up, paths, tmp_path):
    flip_a_data_byte(Path(paths["repo"]))
    code, out, _err = backed_up("check", "--read-data")
    assert code == 1
    assert any(line.startswith("damaged") for line in out.splitlines()), out
    code, out, err = backed_up("restore", "latest", "--to", str(tmp_path / "restored"))
    assert code == 1
    assert "failed" in out + err


# -- doctor -----------------------------------------------------------------------------------------


def test_doctor(backed_up):
    out = backed_up.ok("doctor")
    lines = out.splitlines()
    assert len(lines) >= 4
    assert all(re.match(r"^(ok|FAIL|--)\s+\S[^:]*: ", line) for line in lines), lines
    names = [line.split(":")[0].split(None, 1)[1] for line in lines]
    assert len(names) == len(set(names)), "one line per check"
    assert "configuration" in names and "target" in names


@pytest.mark.parametrize("pattern", ["!", "[z-a]"])
def test_doctor_agrees_that_a_pattern_pathspec_refuses_is_invalid(run, pattern):
    code, out, err = run("doctor", env={**run.env, "BACKUP_EXCLUDE": f"*.tmp,{pattern}"})
    assert code == 2 and out == ""
    assert error_lines(err) == [f"error: BACKUP_EXCLUDE: {pattern!r} is not a valid gitignore-style pattern"]


def test_doctor_before_the_first_backup(run):
    out = run.ok("doctor")
    assert "target" in out


def test_doctor_with_an_unreachable_target(run, paths):
    blocker = Path(paths["tmp"]) / "a-file"
    blocker.write_text("not a folder")
    env = {**run.env, "BACKUP_TARGET": f"file://{blocker}/repo"}
    code, out, err = run("doctor", env=env)
    assert code == 1
    assert any(line.startswith("FAIL") and "target" in line for line in out.splitlines()), out
    assert error_lines(err) == []


# -- commands on a target without a repository --------------------------------------------------


@pytest.mark.parametrize("argv", [["snapshots"], ["snapshots", "--json"], ["ls", "latest"], ["diff", "a", "b"],
                                  ["restore", "latest", "--to", "out"], ["check"], ["check", "--read-data"]])
def test_commands_on_an_empty_target(capsys, tmp_path, argv):
    (tmp_path / "empty").mkdir()
    env = {"BACKUP_TARGET": f"file://{tmp_path}/empty", "BACKUP_STATE_DIR": f"{tmp_path}/state"}
    code, out, err = Runner(capsys, env)(*argv)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "repository" in lines[0], err
    assert not Path("out").exists()


# -- passwords never shown --------------------------------------------------------------------------


def test_target_password_never_in_output(capsys, paths, tmp_path):
    env = {**base_env(paths), "BACKUP_TARGET_PASSWORD": PASSWORD}
    run = Runner(capsys, env)
    seen = []
    for argv in (["backup"], ["backup"], ["snapshots"], ["snapshots", "--json"], ["ls", "latest"],
                 ["ls", "latest", "--json"], ["check", "--read-data"], ["doctor"], ["-v", "snapshots"],
                 ["restore", "latest", "--to", str(tmp_path / "r")], ["ls", "nothing-like-this"]):
        code, out, err = run(*argv)
        seen.append((argv, code))
        assert PASSWORD not in out + err, argv
    assert [code for _argv, code in seen] == [0] * 10 + [1]
    assert_not_in_state(Path(env["BACKUP_STATE_DIR"]))


def assert_not_in_state(state: Path) -> None:
    """Run logs (and anything else kept locally) never hold the password either."""
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PASSWORD.encode() not in data, path
            assert PASSWORD.encode("utf-16-le") not in data, path


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", [["snapshots"], ["check"], ["-v", "ls", "latest"], ["-v", "backup"]])
def test_password_in_sftp_url_not_in_the_error(capsys, tmp_path, command):
    port = closed_port()
    (tmp_path / "src").mkdir()
    env = {"BACKUP_TARGET": f"sftp://backup:{PASSWORD}@127.0.0.1:{port}/srv/backups",
           "BACKUP_SOURCES": f"{tmp_path}/src", "BACKUP_STATE_DIR": f"{tmp_path}/state",
           "BACKUP_SSH_KNOWN_HOSTS": f"{tmp_path}/known_hosts"}
    code, out, err = Runner(capsys, env)(*command)
    assert code == 1
    assert PASSWORD not in out + err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert f"127.0.0.1:{port}" in lines[0]
    assert_not_in_state(tmp_path / "state")


def test_password_in_sftp_url_not_in_doctor(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    env = {"BACKUP_TARGET": f"sftp://backup:{PASSWORD}@127.0.0.1:{closed_port()}/srv/backups",
           "BACKUP_SOURCES": f"{tmp_path}/src", "BACKUP_STATE_DIR": f"{tmp_path}/state",
           "BACKUP_SSH_KNOWN_HOSTS": f"{tmp_path}/known_hosts"}
    code, out, err = Runner(capsys, env)("doctor")
    assert code == 1
    assert PASSWORD not in out + err
    assert any(line.startswith("FAIL") and "target" in line for line in out.splitlines())


# -- names that could drive a terminal ----------------------------------------------------------------

HOSTILE = ["a\nb", "\x1b[31mred", "cr\rhere", "tab\there", "bell\x07", "c1\x85", "bad\udcff", "back\\slash"]
SHOWN = ["a\\nb", "\\x1b[31mred", "cr\\rhere", "tab\\there", "bell\\x07", "c1\\u0085", "bad\\xff", "back\\\\slash"]
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")  # anything but the line ends


def hostile_tree(src: Path) -> None:
    for name in HOSTILE:
        folder = src / "names" / name
        folder.mkdir(parents=True)
        (folder / "file").write_bytes(os.fsencode(name))
    (src / "names" / "link\x1b]0;title\x07").symlink_to("tar\nget\x1b[2J")


def assert_printable(text: str) -> None:
    assert not RAW_CONTROL.search(text), repr(text)
    assert all(line.count("\r") == 0 for line in text.split("\n")), repr(text)


def test_hostile_names_are_escaped_in_ls_diff_and_restore(run, paths, tmp_path):
    src = Path(paths["src"])
    run.ok("backup")
    hostile_tree(src)
    run.ok("backup")
    code, out, err = run("ls", "latest")
    assert code == 0
    assert_printable(out + err)
    for shown in SHOWN:
        assert f"{src}/names/{shown}/file\n" in out
    assert "link\\x1b]0;title\\x07 -> tar\\nget\\x1b[2J\n" in out
    entries = json.loads(run.ok("ls", "latest", "--json"))
    assert {f"{src}/names/{name}/file" for name in HOSTILE} <= {entry["path"] for entry in entries}
    first, second = run.snapshot_ids()
    out = run.ok("diff", first, second)
    assert_printable(out)
    assert f"+ {src}/names/a\\nb/file" in out.splitlines()
    to = tmp_path / "restored"
    in_the_way = to / src.relative_to("/") / "names" / "a\nb"
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_text("a file where a folder is restored")
    code, out, err = run("restore", "latest", "--to", str(to))
    assert code == 1
    assert_printable(out + err)
    assert f"failed: {src}/names/a\\nb" in out


def test_a_hostile_host_name_is_escaped_in_snapshots(run, paths):
    from tests.helpers import backup
    from watcher.backends.local import LocalBackend
    from watcher.repository import Repository

    repository = Repository(LocalBackend(paths["repo"]), None)
    repository.open(create=True)
    repository.load_index()
    backup(repository, Path(paths["src"]), host="\x1b[2Jevil\nhost")
    repository.close()
    code, out, err = run("snapshots")
    assert code == 0
    assert_printable(out + err)
    assert "\\x1b[2Jevil\\nhos" in out
    assert json.loads(run.ok("snapshots", "--json"))[0]["host"] == "\x1b[2Jevil\nhost"


def test_the_runs_log_holds_hostile_names_escaped_and_every_line_after_them(run, paths, tmp_path):
    """A name that is not UTF-8 stopped the run's log (the mail's attachment) at its line."""
    os.mkfifo(os.fsencode(paths["src"]) + b"/fifo\xff\x1b[31mred")  # logged: skipped, not a file
    run.ok("backup")
    [log_file] = (tmp_path / "state" / "logs").glob("*.log")
    text = log_file.read_text(encoding="utf-8")
    assert_printable(text)
    assert f"skipping {paths['src']}/fifo\\xff\\x1b[31mred: not a file, folder or symlink" in text
    assert " saved: " in text.splitlines()[-1]


# -- several targets: --target N, and doctor checks each ---------------------------------------------


@pytest.fixture
def two_targets(capsys, paths, tmp_path):
    """Target 1 with one snapshot, target 2 (another folder) with two, each made by a one-target backup
    so that these tests do not depend on how a run serves several targets."""
    first, second = f"file://{paths['repo']}", f"file://{tmp_path}/repo2"
    base = {**base_env(paths), "BACKUP_HOST": "test-host"}
    Runner(capsys, {**base, "BACKUP_TARGET": first}).ok("backup")
    alone = Runner(capsys, {**base, "BACKUP_TARGET": second, "BACKUP_STATE_DIR": f"{tmp_path}/state2"})
    alone.ok("backup")
    (Path(paths["src"]) / "a.txt").write_text("only in the second target\n")
    alone.ok("backup")
    return Runner(capsys, {**base, "BACKUP_TARGET": first, "BACKUP_TARGET_2": second})


def listing(run: Runner, *argv: str) -> list[dict]:
    return json.loads(run.ok(*argv, "--json"))


def test_snapshots_json_names_its_target(two_targets, paths, tmp_path):
    default = listing(two_targets, "snapshots")
    assert [item["repository"] for item in default] == [{"number": 1, "url": f"file://{paths['repo']}"}]
    chosen = listing(two_targets, "snapshots", "--target", "2")
    assert [item["repository"] for item in chosen] == [{"number": 2, "url": f"file://{tmp_path}/repo2"}] * 2
    assert listing(two_targets, "snapshots", "--target", "1") == default


def test_ls_json_names_its_target_and_snapshot(two_targets, paths, tmp_path):
    src = paths["src"]
    [entry] = listing(two_targets, "ls", "latest", f"{src}/a.txt", "--target", "2")
    second_latest = listing(two_targets, "snapshots", "--target", "2")[-1]["id"]
    assert entry["repository"] == {"number": 2, "url": f"file://{tmp_path}/repo2"}
    assert entry["snapshot"] == second_latest
    assert entry["size"] == len("only in the second target\n")
    [entry] = listing(two_targets, "ls", "latest", f"{src}/a.txt")
    assert entry["size"] == len("hello\n")


def test_diff_restore_check_and_forget_take_the_target(two_targets, paths, tmp_path):
    first, second = (snapshot["id"] for snapshot in listing(two_targets, "snapshots", "--target", "2"))
    assert f"M {paths['src']}/a.txt" in two_targets.ok("diff", first, second, "--target", "2").splitlines()
    code, _out, err = two_targets("diff", first, second)
    assert code == 1 and len(error_lines(err)) == 1, "target 1 does not hold target 2's snapshots"
    to = tmp_path / "restored"
    two_targets.ok("restore", second, "--target", "2", "--to", str(to))
    assert restored_root(to, paths["src"]).joinpath("a.txt").read_text() == "only in the second target\n"
    flip_a_data_byte(tmp_path / "repo2")
    assert "sound" in two_targets.ok("check", "--read-data")
    code, out, _err = two_targets("check", "--read-data", "--target", "2")
    assert code == 1 and "damaged" in out
    env = {**two_targets.env, "BACKUP_KEEP_LAST": "1"}
    code, out, _err = two_targets("forget", "--dry-run", "--target", "2", env=env)
    assert code == 0 and f"forget {first}" in out
    code, out, _err = two_targets("forget", "--target", "2", env=env)
    assert code == 0 and "removed 1 snapshots" in out
    assert len(listing(two_targets, "snapshots", "--target", "2")) == 1
    assert len(listing(two_targets, "snapshots")) == 1


@pytest.mark.parametrize("argv", [["snapshots"], ["ls", "latest"], ["diff", "latest", "latest"],
                                  ["restore", "latest", "--to", "out"], ["check"], ["forget", "--dry-run"]])
def test_human_output_names_the_target_when_there_are_several(two_targets, tmp_path, argv):
    for number, url in ((1, two_targets.env["BACKUP_TARGET"]), (2, f"file://{tmp_path}/repo2")):
        out = two_targets.ok(*argv, "--target", str(number))
        assert out.splitlines()[0] == f"target {number} ({url})", out


@pytest.mark.parametrize("argv", [["snapshots"], ["ls", "latest"], ["check"]])
def test_one_target_is_not_named(backed_up, argv):
    assert "target 1" not in backed_up.ok(*argv) and "target 1" not in backed_up.ok(*argv, "--target", "1")


@pytest.mark.parametrize("argv", [["snapshots"], ["snapshots", "--json"], ["ls", "latest"], ["diff", "a", "b"],
                                  ["restore", "latest", "--to", "out"], ["check"], ["forget"]])
@pytest.mark.parametrize(("number", "expected"), [
    ("3", "error: --target 3: BACKUP_TARGET_3 is not set (the targets are 1 and 2)"),
    ("10", "error: --target 10: targets are numbered 1 to 9"),
    ("0", "error: --target 0: targets are numbered 1 to 9"),
])
def test_a_target_that_is_not_configured_is_one_line_and_exit_2(two_targets, argv, number, expected):
    code, out, err = two_targets(*argv, "--target", number)
    assert (code, out, err.splitlines()) == (2, "", [expected])
    assert not Path("out").exists()


def test_target_must_be_a_number(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["snapshots", "--target", "two"], {})
    assert caught.value.code == 2
    assert "usage: watcher" in capsys.readouterr().err


def test_doctor_checks_every_target(two_targets, paths, tmp_path):
    lines = two_targets.ok("doctor").splitlines()
    assert f"ok   target 1: file://{paths['repo']}" in lines
    assert "ok   target 1 repository: 1 snapshots, 1 packs, not encrypted (format 1)" in lines
    assert f"ok   target 2: file://{tmp_path}/repo2" in lines
    assert any(line.startswith("ok   target 2 repository: 2 snapshots") for line in lines), lines
    names = [line.split(":")[0].split(None, 1)[1] for line in lines]
    assert len(names) == len(set(names)), "one line per check"


def test_doctor_fails_when_any_target_fails_and_names_it(two_targets, paths, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**two_targets.env, "BACKUP_TARGET_2": f"file://{blocker}/repo", "BACKUP_TARGET_3": "file:///nowhere-yet"}
    code, out, err = two_targets("doctor", env=env)
    assert code == 1 and error_lines(err) == []
    lines = out.splitlines()
    assert f"ok   target 1: file://{paths['repo']}" in lines
    assert [line for line in lines if line.startswith("FAIL")] == [
        line for line in lines if line.startswith("FAIL target 2: ")], lines
    assert len([line for line in lines if line.startswith("FAIL")]) == 1
    assert any(line.startswith("ok   target 3: file:///nowhere-yet reachable; no repository yet") for line in lines)


def test_doctor_says_which_target_is_plain_ftp(two_targets):
    env = {**two_targets.env, "BACKUP_TARGET_2": f"ftp://nobody@127.0.0.1:{closed_port()}/x"}
    code, out, _err = two_targets("doctor", env=env)
    assert code == 1
    assert "ok   target 2 encryption: plain FTP: transfers are not encrypted" in out.splitlines()
    assert "encryption" not in "".join(line for line in out.splitlines() if "target 1" in line)


def test_every_targets_password_is_hidden(two_targets, tmp_path):
    second_secret = tmp_path / "second-password"
    second_secret.write_text("Second-Secret-99\n")
    port = closed_port()
    env = {**two_targets.env, "BACKUP_TARGET_PASSWORD": PASSWORD,
           "BACKUP_TARGET_2": f"sftp://backup@127.0.0.1:{port}/srv",
           "BACKUP_TARGET_2_PASSWORD_FILE": str(second_secret),
           "BACKUP_TARGET_3": f"ftp://backup:Third-Secret-77@127.0.0.1:{port}/srv",
           "BACKUP_SSH_KNOWN_HOSTS": f"{tmp_path}/known_hosts"}
    for argv in (["doctor"], ["-v", "doctor"], ["snapshots", "--target", "2"], ["-v", "check", "--target", "3"],
                 ["snapshots", "--json", "--target", "1"], ["ls", "latest", "--target", "3"]):
        _code, out, err = two_targets(*argv, env=env)
        for secret in (PASSWORD, "Second-Secret-99", "Third-Secret-77"):
            assert secret not in out + err, (argv, secret)
    assert_not_in_state(Path(env["BACKUP_STATE_DIR"]))
