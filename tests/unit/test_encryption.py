"""Encrypted repositories (format 2), through the real CLI in process on `file://` targets: what is
stored, what a wrong password or a damaged object does, the keys, and where passwords never go.
The same checks over SFTP are in tests/integration/test_encryption_sftp.py."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import zstandard

from tests.unit.test_cli import Runner
from watcher import crypto, repository
from watcher.backends.memory import MemoryBackend
from watcher.errors import ConfigError, IntegrityError
from watcher.pack import BlobEntry, EncryptedCodec, blob_associated, parse_header
from watcher.repository import Protection, Repository

PASSWORD = "correct horse battery staple"
OTHER = "a second pass phrase"
CHEAP = crypto.KdfParams(1 << 10, 8, 1)  # the tests' scrypt: milliseconds, not half a second
# Names and contents with markers that must never be found on the target, in any form.
MARKERS = {
    "MARKERNAMEALPHA-folder/MARKERNAMEBRAVO-notes.txt": b"MARKERCONTENTCHARLIE " * 4000,  # compressible
    "MARKERNAMEDELTA.bin": b"MARKERCONTENTECHO" + os.urandom(200_000) + b"MARKERCONTENTFOXTROT",
    "small/MARKERNAMEGOLF": b"MARKERCONTENTHOTEL-tiny",
}


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(crypto, "tuned_params", lambda seconds=crypto.KDF_SECONDS: CHEAP)


@pytest.fixture
def setup(tmp_path, capsys):
    src = tmp_path / "src"
    for relative, content in MARKERS.items():
        path = src / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    env = {"BACKUP_SOURCES": str(src), "BACKUP_TARGET": f"file://{tmp_path}/repo",
           "BACKUP_STATE_DIR": f"{tmp_path}/state", "HOME": f"{tmp_path}/home",
           "BACKUP_REPOSITORY_PASSWORD": PASSWORD}
    return tmp_path, src, Runner(capsys, env)


def files_below(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def windows(marker: bytes, size: int = 12) -> set[bytes]:
    return {marker[start:start + size] for start in range(max(1, len(marker) - size + 1))}


def marker_windows() -> set[bytes]:
    """Every 12-byte window of every marker string, of names and contents (unmarked random bytes aside)."""
    found: set[bytes] = set()
    for relative, content in MARKERS.items():
        for part in relative.split("/"):
            found |= windows(part.encode())
        for piece in content.split(b"MARKER")[1:]:
            word = b"MARKER" + piece[:20].split(b" ")[0].split(b"-")[0]
            found |= windows(word.rstrip(bytes(range(128, 256))))
    return {window for window in found if len(window) == 12}


def assert_nothing_readable(root: Path) -> None:
    needles = marker_windows()
    assert len(needles) > 50
    for path in files_below(root):
        data = path.read_bytes()
        assert path.name.find("MARKER") < 0
        for needle in needles:
            assert needle not in data, f"{needle!r} in {path}"


def restored_files(root: Path, src: Path) -> dict[str, bytes]:
    base = root / str(src).lstrip("/")
    return {str(path.relative_to(base)): path.read_bytes() for path in files_below(base)} if base.exists() else {}


def test_an_encrypted_repository_stores_no_name_and_no_content_readably(setup):
    tmp, src, run = setup
    run.ok("backup")
    config = json.loads((tmp / "repo" / "config").read_bytes())
    assert (config["version"], config["encryption"], config["compression"]) == (2, "aes-256-gcm", "zstd")
    assert len(list((tmp / "repo" / "keys").iterdir())) == 1
    assert_nothing_readable(tmp / "repo")
    run.ok("restore", "latest", "--to", str(tmp / "out"))
    assert restored_files(tmp / "out", src) == MARKERS
    assert "repository sound" in run.ok("check", "--read-data")


def test_compressible_data_is_stored_smaller_and_the_encoding_is_recorded_per_blob(setup):
    tmp, _src, run = setup
    run.ok("backup")
    opened = open_file_repository(tmp)
    encodings = {(entry.type, entry.encoding) for entry in opened.blobs.values()}
    stored = sum(path.stat().st_size for path in files_below(tmp / "repo" / "packs"))
    opened.close()
    assert ("data", "zstd") in encodings and ("data", "raw") in encodings and ("tree", "zstd") in encodings
    assert stored < len(MARKERS["MARKERNAMEDELTA.bin"]) + 10_000  # the 84 kB of text shrink to little


@pytest.mark.parametrize("compression", ["off", "max"])
def test_compression_can_be_turned_off_or_up(setup, compression):
    tmp, src, run = setup
    run.env["BACKUP_COMPRESSION"] = compression
    run.ok("backup")
    opened = open_file_repository(tmp, compression)
    encodings = {entry.encoding for entry in opened.blobs.values()}
    opened.close()
    assert encodings == ({"raw"} if compression == "off" else {"raw", "zstd"})
    run.ok("restore", "latest", "--to", str(tmp / "out"))
    assert restored_files(tmp / "out", src) == MARKERS


def open_file_repository(tmp: Path, compression: str = "auto", password: str = PASSWORD) -> Repository:
    from watcher.backends.local import LocalBackend

    opened = Repository(LocalBackend(str(tmp / "repo")), None, Protection(password, compression=compression))
    opened.backend.open()
    opened.open()
    opened.load_index()
    return opened


@pytest.mark.parametrize("command", [("snapshots",), ("snapshots", "--json"), ("ls", "latest"), ("check",),
                                     ("restore", "latest", "--to", "OUT"), ("backup",), ("forget",), ("key", "list")])
def test_a_wrong_password_is_one_line_and_exit_1_in_every_command(setup, command):
    tmp, _src, run = setup
    run.ok("backup")
    env = {**run.env, "BACKUP_REPOSITORY_PASSWORD": "not the right one"}
    code, out, err = run(*[str(tmp / "out") if item == "OUT" else item for item in command], env=env)
    assert code == 1, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "does not open the encrypted repository" in lines[0] and "wrong password" in lines[0]
    assert not (tmp / "out").exists()


def test_an_encrypted_repository_without_a_password_is_a_configuration_error(setup):
    _tmp, _src, run = setup
    run.ok("backup")
    env = {key: value for key, value in run.env.items() if key != "BACKUP_REPOSITORY_PASSWORD"}
    code, _out, err = run("snapshots", env=env)
    assert code == 2 and err.startswith("error: BACKUP_REPOSITORY_PASSWORD: ") and "is encrypted" in err


def test_a_file_repository_without_a_password_is_created_unencrypted_and_the_log_says_so(setup, caplog):
    tmp, _src, run = setup
    del run.env["BACKUP_REPOSITORY_PASSWORD"]
    with caplog.at_level("INFO"):
        run.ok("backup")
    assert json.loads((tmp / "repo" / "config").read_bytes())["version"] == 1
    assert "not encrypted (BACKUP_REPOSITORY_PASSWORD is not set)" in caplog.text
    assert not (tmp / "repo" / "keys").exists()


def test_an_existing_unencrypted_repository_keeps_working_with_a_password_set_and_says_so(setup, caplog):
    tmp, src, run = setup
    plain = {key: value for key, value in run.env.items() if key != "BACKUP_REPOSITORY_PASSWORD"}
    assert run("backup", env=plain)[0] == 0
    (src / "later.txt").write_text("later\n")
    with caplog.at_level("WARNING"):
        run.ok("backup")
    assert "is not encrypted (format 1" in caplog.text
    assert json.loads((tmp / "repo" / "config").read_bytes())["version"] == 1
    assert len(run.snapshot_ids()) == 2


def test_a_new_repository_on_a_server_without_a_password_is_refused_unless_encryption_is_none():
    refused = Repository(MemoryBackend(), None, Protection(None, server=True))
    with pytest.raises(ConfigError, match=r"^BACKUP_REPOSITORY_PASSWORD: required to create the new repository"):
        refused.open(create=True)
    assert not refused.backend.exists("config")
    plain = Repository(MemoryBackend(), None, Protection(None, encryption="none", server=True))
    plain.open(create=True)
    assert plain.config.version == 1
    chosen = Repository(MemoryBackend(), None, Protection(PASSWORD, encryption="none", server=True))
    chosen.open(create=True)
    assert chosen.config.version == 1


def test_two_repositories_with_one_password_have_different_keys_and_blob_ids(tmp_path):
    content = b"the same file in both repositories\n" * 100
    ids, masters = [], []
    for _ in range(2):
        opened = Repository(MemoryBackend(), None, Protection(PASSWORD))
        opened.open(create=True)
        masters.append(opened.codec.master)
        ids.append(opened.codec.blob_id(content))
    assert masters[0].encryption != masters[1].encryption and masters[0].mac != masters[1].mac
    assert ids[0] != ids[1]


def flip(path: Path, where: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    where = len(data) // 2 if where is None else where
    data[where] ^= 0x5A
    path.chmod(0o600)
    path.write_bytes(bytes(data))


def damaged_setup(setup):
    tmp, src, run = setup
    run.ok("backup")
    run.env["BACKUP_STATE_DIR"] = f"{tmp}/fresh-state"  # another machine: no local copy of anything
    repository._UNLOCKED.clear()  # and another process: the key is unwrapped again
    return tmp, src, run


def assert_no_wrong_byte(tmp: Path, src: Path) -> None:
    for name, data in restored_files(tmp / "out", src).items():
        assert data == MARKERS[name], name


def test_a_flipped_byte_in_a_pack_is_reported_by_check_and_never_restored(setup):
    tmp, src, run = damaged_setup(setup)
    packs = files_below(tmp / "repo" / "packs")
    biggest = max(packs, key=lambda path: path.stat().st_size)
    opened = open_file_repository(tmp)
    entry = max(parse_header(biggest.name, biggest.read_bytes(), opened.codec), key=lambda entry: entry.length)
    opened.close()
    flip(biggest, entry.offset + entry.length // 2)
    code, out, _err = run("check", "--read-data")
    assert code == 1 and f"pack {biggest.name[:12]} does not match its hash" in out
    code, out, _err = run("restore", "latest", "--to", str(tmp / "out"))
    assert code == 1 and "fails authentication" in out
    assert_no_wrong_byte(tmp, src)
    assert len(restored_files(tmp / "out", src)) == len(MARKERS) - 1


def test_a_flipped_byte_in_an_index_file_is_reported_and_refused(setup):
    tmp, src, run = damaged_setup(setup)
    for index in files_below(tmp / "repo" / "index"):
        flip(index)
    code, out, err = run("check")
    assert code == 1 and "does not match its hash" in out + err
    code, _out, err = run("restore", "latest", "--to", str(tmp / "out"))
    assert code == 1 and err.startswith("error: index ") and "does not match its hash" in err
    assert restored_files(tmp / "out", src) == {}


def test_a_flipped_byte_in_a_snapshot_is_reported_and_refused(setup):
    tmp, src, run = damaged_setup(setup)
    (snapshot,) = files_below(tmp / "repo" / "snapshots")
    flip(snapshot)
    code, out, _err = run("check")
    assert code == 1 and f"snapshot {snapshot.name} fails authentication" in out
    code, _out, err = run("restore", snapshot.name, "--to", str(tmp / "out"))
    assert code == 1 and "fails authentication" in err
    assert restored_files(tmp / "out", src) == {}


def test_a_snapshot_renamed_to_another_id_fails_authentication(setup):
    tmp, _src, run = damaged_setup(setup)
    (snapshot,) = files_below(tmp / "repo" / "snapshots")
    snapshot.rename(snapshot.with_name(snapshot.name[:-8] + "00000000"))
    code, out, _err = run("check")
    assert code == 1 and "fails authentication" in out


@pytest.mark.parametrize("where", [0, 40, -30, None])
def test_a_flipped_byte_in_a_key_file_is_reported_and_refused(setup, where):
    tmp, src, run = damaged_setup(setup)
    (key,) = files_below(tmp / "repo" / "keys")
    flip(key, None if where is None else where % key.stat().st_size)
    code, _out, err = run("restore", "latest", "--to", str(tmp / "out"))
    assert code == 1 and "no key file of the encrypted repository" in err and "wrong password" not in err
    assert f"key {key.name[:12]} does not match its hash" in err
    assert restored_files(tmp / "out", src) == {}
    code, _out, err = run("check")
    assert code == 1 and "does not match its hash" in err


def test_check_reports_a_damaged_key_that_another_password_opens(setup):
    tmp, _src, run = setup
    run.ok("backup")
    run.env["BACKUP_NEW_REPOSITORY_PASSWORD"] = OTHER
    run.ok("key", "add")
    ours = open_file_repository(tmp)
    other = next(key for key in files_below(tmp / "repo" / "keys") if key.name != ours.key_id)
    ours.close()
    flip(other)
    code, out, _err = run("check")
    assert code == 1 and f"key {other.name[:12]} does not match its hash" in out


def test_key_add_list_passwd_and_remove(setup):
    _tmp, _src, run = setup
    run.ok("backup")
    listed = json.loads(run.ok("key", "list", "--json"))
    assert len(listed) == 1 and listed[0]["current"] is True and set(listed[0]) >= {"id", "created", "host"}
    first = listed[0]["id"]
    code, _out, err = run("key", "remove", first)
    assert code == 1 and "last key" in err
    run.env["BACKUP_NEW_REPOSITORY_PASSWORD"] = OTHER
    assert "added key" in run.ok("key", "add")
    ids = {key["id"] for key in json.loads(run.ok("key", "list", "--json"))}
    assert len(ids) == 2
    code, _out, err = run("key", "remove", first[:12])
    assert code == 1 and "key passwd" in err
    second = (ids - {first}).pop()
    # the new password opens the repository alone
    alone = {**run.env, "BACKUP_REPOSITORY_PASSWORD": OTHER}
    repository._UNLOCKED.clear()
    assert run("snapshots", env=alone)[0] == 0
    assert "removed key" in run.ok("key", "remove", second[:12])
    assert [key["id"] for key in json.loads(run.ok("key", "list", "--json"))] == [first]
    repository._UNLOCKED.clear()
    assert run("snapshots", env=alone)[0] == 1
    # passwd: a new key for the new password, the old one removed
    assert "changed" in run.ok("key", "passwd")
    repository._UNLOCKED.clear()
    assert run("snapshots")[0] == 1
    assert run("snapshots", env=alone)[0] == 0
    assert len(json.loads(run("key", "list", "--json", env=alone)[1])) == 1
    human = run("key", "list", env=alone)[1]
    assert "*" in human and "1 keys" in human


def test_key_commands_need_the_new_password_from_somewhere(setup, monkeypatch):
    _tmp, _src, run = setup
    run.ok("backup")
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # noqa: SIM115 (closed with the test)
    code, _out, err = run("key", "add")
    assert code == 2 and err.startswith("error: BACKUP_NEW_REPOSITORY_PASSWORD: ")


def test_key_commands_on_an_unencrypted_repository_say_it_has_no_keys(setup):
    _tmp, _src, run = setup
    del run.env["BACKUP_REPOSITORY_PASSWORD"]
    run.ok("backup")
    code, _out, err = run("key", "list")
    assert code == 1 and "not encrypted" in err


def test_the_key_is_unwrapped_once_per_process(setup, monkeypatch):
    _tmp, _src, run = setup
    calls = []
    real = crypto.KdfParams.derive
    monkeypatch.setattr(crypto.KdfParams, "derive", lambda self, *args: calls.append(1) or real(self, *args))
    run.ok("backup")
    assert len(calls) == 1  # the new key's wrapping
    for _ in range(3):
        run.ok("snapshots")
        run.ok("backup")
    assert len(calls) == 1


def test_passwords_never_reach_output_json_logs_the_cache_or_the_state_folder(setup):
    tmp, _src, run = setup
    run.env["BACKUP_NEW_REPOSITORY_PASSWORD"] = OTHER
    outputs = [run.ok("backup"), run.ok("snapshots", "--json"), run.ok("ls", "latest", "--json"),
               run.ok("key", "list", "--json"), run.ok("key", "add"), run.ok("check", "--read-data"),
               run.ok("-v", "snapshots")]
    for secret in (PASSWORD, OTHER):
        assert not any(secret in output for output in outputs)
        for root in (tmp / "state", tmp / "repo"):
            for path in files_below(root):
                assert secret.encode() not in path.read_bytes(), path
    for path in (tmp / "state").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_a_zstd_blob_is_inflated_within_bounds_only():
    codec = EncryptedCodec(crypto.MasterKey.generate())
    content = b"x" * 100_000

    def sealed(plain: bytes, blob_type: str = "data") -> tuple[bytes, BlobEntry]:
        blob_id = codec.blob_id(content)
        entry = BlobEntry(blob_id, blob_type, "zstd", 0, 0, "p" * 64)
        return crypto.seal(codec.master.encryption, plain, blob_associated(blob_type, "zstd", blob_id)), entry

    stored, entry = sealed(zstandard.ZstdCompressor().compress(content))
    assert codec.decode(stored, entry) == content
    huge = zstandard.ZstdCompressor().compress(bytes(17 << 20))  # a data blob holds at most 16 MiB
    with pytest.raises(IntegrityError, match="inflates to more than"):
        codec.decode(*sealed(huge))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(content)
    with pytest.raises(IntegrityError, match="does not say its size"):
        codec.decode(*sealed(unsized))
    with pytest.raises(IntegrityError, match="corrupt"):
        codec.decode(*sealed(b"not zstd at all"))


@pytest.mark.parametrize(("field", "value"), [("n", 1 << 21), ("n", 1000), ("r", 64), ("p", 65), ("p", 0),
                                              ("r", True), ("salt", "not base64!"), ("data", "AAAA"),
                                              ("kdf", "argon2id"), ("version", 2), ("created", "yesterday")])
def test_a_key_file_asking_for_absurd_work_or_malformed_is_refused_before_any_scrypt(field, value, monkeypatch):
    master = crypto.MasterKey.generate()
    document = json.loads(crypto.wrap_key(master, "0" * 32, PASSWORD, CHEAP))
    document[field] = value
    if field == "p":
        document["n"] = 1 << 20  # n alone is fine; with p it is 64 s of work or more
    data = json.dumps(document).encode()
    monkeypatch.setattr(crypto.KdfParams, "derive", lambda *args: pytest.fail("scrypt ran"))
    with pytest.raises(IntegrityError, match="cannot be read"):
        crypto.decode_key_file(crypto.hashlib.sha256(data).hexdigest(), data)


def test_a_key_file_of_another_repository_does_not_open_this_one():
    master = crypto.MasterKey.generate()
    data = crypto.wrap_key(master, "0" * 32, PASSWORD, CHEAP)
    key = crypto.decode_key_file(crypto.hashlib.sha256(data).hexdigest(), data)
    assert key.unwrap(PASSWORD, "0" * 32) == master
    assert key.unwrap(PASSWORD, "1" * 32) is None
    assert key.unwrap("wrong", "0" * 32) is None


def test_hkdf_is_rfc_5869():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    ikm, salt = os.urandom(32), os.urandom(32)
    expected = HKDF(hashes.SHA256(), 32, salt, crypto.HKDF_INFO).derive(ikm)
    assert crypto.hkdf(ikm, salt) == expected


def test_the_kdf_is_tuned_to_about_half_a_second_within_the_bounds_readers_accept(monkeypatch):
    monkeypatch.undo()  # the real tuning
    params = crypto.tuned_params(0.05)  # shorter, so the test stays quick; the shape is the same
    assert params.n <= crypto.SCRYPT_N and params.r == crypto.SCRYPT_R
    assert 128 * params.n * params.r <= crypto.SCRYPT_MEMORY_MAX
    assert params.n * params.r * params.p <= crypto.SCRYPT_WORK_MAX


def test_a_wrong_password_fails_a_daemon_run_as_a_permanent_error(setup):
    from watcher.config import load_settings
    from watcher.daemon import Batch, Daemon

    _tmp, _src, run = setup
    run.ok("backup")
    repository._UNLOCKED.clear()
    daemon = Daemon(load_settings({**run.env, "BACKUP_REPOSITORY_PASSWORD": "not the right one"}, need_sources=True))
    state = daemon.targets[0]
    daemon.health.started([state.label])
    state.pending.merge(Batch(full=True, reasons=["test"]))
    daemon.run_pass(daemon.targets)
    assert state.failures == 1 and state.outage_reported  # reported at once, not retried as if it could pass
    assert "wrong password" in str(state.last_error) and "needs a person" in daemon._next_step(state)


def test_the_daemon_stops_at_start_on_an_encrypted_repository_without_a_password(setup):
    _tmp, _src, run = setup
    run.ok("backup")
    env = {key: value for key, value in run.env.items() if key != "BACKUP_REPOSITORY_PASSWORD"}
    code, _out, err = run("run", env=env)
    assert code == 2 and err.splitlines()[-1].startswith("error: BACKUP_REPOSITORY_PASSWORD: ")


def test_a_config_replaced_by_an_unencrypted_one_is_refused_by_a_machine_that_knew_better(setup):
    tmp, _src, run = setup
    run.ok("backup")
    config = json.loads((tmp / "repo" / "config").read_bytes())
    config.update(version=1, hash="sha256", compression="none", encryption="none")
    (tmp / "repo" / "config").write_text(json.dumps(config))
    code, _out, err = run("backup")
    assert code == 1 and "was encrypted when this machine last opened it" in err
    assert (tmp / "state" / "repos" / config["id"] / "encrypted").exists()


def test_forget_repacks_sealed_blobs_as_they_are_and_everything_stays_readable(setup):
    tmp, src, run = setup
    (src / "gone.bin").write_bytes(os.urandom(300_000))
    run.ok("backup")
    (src / "gone.bin").unlink()
    run.ok("backup")
    run.env["BACKUP_KEEP_LAST"] = "1"
    out = run.ok("forget")
    assert "1 repacked" in out or "repacked" in out
    assert "repository sound" in run.ok("check", "--read-data")
    run.ok("restore", "latest", "--to", str(tmp / "out"))
    assert restored_files(tmp / "out", src) == MARKERS
    assert_nothing_readable(tmp / "repo")


def test_a_new_process_unwraps_the_key_beside_connecting_from_the_state_folders_copy(setup, monkeypatch):
    tmp, _src, run = setup
    run.ok("backup")
    (record,) = (tmp / "state" / "targets").glob("*.key")
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    repository._UNLOCKED.clear()  # another process
    threads = []
    real = crypto.KeyFile.unwrap

    def unwrap(self, *args):
        import threading

        threads.append(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(crypto.KeyFile, "unwrap", unwrap)
    run.ok("snapshots")
    assert threads == ["key-unwrap"]
    # a wrong password: the head start fails, that key is not tried again, one line as ever
    repository._UNLOCKED.clear()
    threads.clear()
    code, _out, err = run("snapshots", env={**run.env, "BACKUP_REPOSITORY_PASSWORD": "not the right one"})
    assert code == 1 and "wrong password" in err and threads == ["key-unwrap"]
    # another repository at the same place: the copy is passed over, the new key read from the target
    import shutil

    old = record.read_bytes()
    shutil.rmtree(tmp / "repo")
    repository._UNLOCKED.clear()
    run.ok("backup")
    record.write_bytes(old)
    repository._UNLOCKED.clear()
    threads.clear()
    run.ok("snapshots")
    assert threads == ["key-unwrap", "MainThread"]
    assert record.read_bytes() != old  # the copy follows the key that opened it


def test_doctor_says_whether_a_repository_is_encrypted_and_whether_a_server_one_may_be_created(setup):
    _tmp, _src, run = setup
    run.ok("backup")
    assert "1 snapshots, 1 packs, encrypted (format 2)" in run.ok("doctor")
    from watcher.cli import creation
    from watcher.config import load_settings

    plain = {key: value for key, value in run.env.items() if key != "BACKUP_REPOSITORY_PASSWORD"}
    server = load_settings({**plain, "BACKUP_TARGET": "sftp://u@example.org/srv"})
    assert creation(server, server.target)[0] is False
    assert creation(load_settings({**plain, "BACKUP_TARGET": "sftp://u@example.org/srv", "BACKUP_ENCRYPTION": "none"}),
                    server.target) == (True, "the first backup creates it, not encrypted")
    assert creation(load_settings(run.env), server.target) == (True, "the first backup creates it, encrypted")


def test_a_first_backup_makes_the_new_repositorys_key_beside_connecting(setup, monkeypatch):
    """scrypt's tuning and derivation run in a thread from before the target is reached; a key made so
    for a target that turns out to hold a repository is dropped, never written."""
    tmp, _src, run = setup
    threads = []
    real = crypto.wrap_key

    def wrap_key(*args):
        import threading

        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(crypto, "wrap_key", wrap_key)
    run.ok("backup")
    assert threads == ["key-prepare"]
    (key,) = files_below(tmp / "repo" / "keys")
    threads.clear()
    repository._UNLOCKED.clear()
    run.env["BACKUP_STATE_DIR"] = f"{tmp}/another-machine"
    run.ok("backup")
    assert threads == ["key-prepare"] and files_below(tmp / "repo" / "keys") == [key]
