"""Encrypted repositories against a server that lies and against processes that race: a config passed
off as unencrypted or with other parameters, key files by the thousand, two creators or two key
changes at once, and what the state folder and the cache keep. tests/unit/test_encryption.py has the
ordinary use; the same `setup` (real CLI in process, `file://` targets)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit import test_encryption as ordinary
from tests.unit.test_encryption import CHEAP, OTHER, PASSWORD, damaged_setup, files_below, flip
from watcher import crypto, repository
from watcher.backends.local import LocalBackend
from watcher.backends.memory import MemoryBackend
from watcher.errors import ConfigError, IntegrityError, RepositoryError
from watcher.locks import RepositoryLockedError, locked
from watcher.repository import KEYS_MAX, PACK_SIZE_MIN_ENCRYPTED, Protection, Repository, WrongPasswordError

setup = ordinary.setup
cheap_kdf = ordinary.cheap_kdf  # autouse: scrypt in milliseconds


def server_repository(path: Path, state: Path, password: str | None = PASSWORD, encryption: str = "auto") -> Repository:
    """A repository opened as on a server target (`server=True`), over a folder the test can rewrite."""
    opened = Repository(LocalBackend(str(path)), state, Protection(password, encryption, server=True))
    opened.backend.open()
    return opened


def plain_repository(path: Path) -> str:
    """What a hostile server serves: a new unencrypted repository (another id); returns its id."""
    made = Repository(LocalBackend(str(path)), None, Protection(None, "none"))
    made.backend.open()
    made.open(create=True)
    made.close()
    return made.config.id


def test_a_server_cannot_pass_an_unknown_unencrypted_repository_to_a_machine_with_a_password(tmp_path):
    """Neither to be sent plain data nor to have forged files restored: refused, reading or writing,
    until one run with BACKUP_ENCRYPTION=none accepts it at that target."""
    plain_repository(tmp_path / "repo")
    for create in (True, False):
        with pytest.raises(RepositoryError, match=r"not encrypted .format 1. and this machine has not used it there"):
            server_repository(tmp_path / "repo", tmp_path / "state").open(create=create)
    accepted = server_repository(tmp_path / "repo", tmp_path / "state", encryption="none")
    accepted.open()
    assert accepted.config.version == 1
    server_repository(tmp_path / "repo", tmp_path / "state").open(create=True)  # from then on, as it was
    # without a password nothing is expected to be encrypted: it opens as before
    server_repository(tmp_path / "repo", tmp_path / "other-state", password=None).open(create=True)


def test_an_unencrypted_repository_this_machine_backed_up_into_before_keeps_working(tmp_path):
    """An earlier watcher's state folder: no record of the target, but the record of its last snapshot."""
    repository_id = plain_repository(tmp_path / "repo")
    known = tmp_path / "state" / "repos" / repository_id
    known.mkdir(parents=True)
    (known / "last-snapshot.json").write_text("{}")
    server_repository(tmp_path / "repo", tmp_path / "state").open(create=True)
    # another target now serving that repository's config is not taken for it
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "config").write_bytes((tmp_path / "repo" / "config").read_bytes())
    with pytest.raises(RepositoryError, match="has not used it there before"):
        server_repository(tmp_path / "mirror", tmp_path / "state").open(create=True)


def test_doctor_fails_on_an_unencrypted_repository_the_next_backup_would_refuse(tmp_path):
    from watcher.actions.doctor import check_repository

    plain_repository(tmp_path / "repo")

    def opened() -> Repository:
        made = server_repository(tmp_path / "repo", tmp_path / "state")
        made.open()
        return made

    (verdict,) = check_repository(opened, "the target")
    assert verdict.ok is False and "BACKUP_ENCRYPTION=none" in verdict.detail


def encrypted_then_emptied(tmp_path: Path) -> None:
    """A target where this machine made an encrypted repository, which is then gone."""
    made = server_repository(tmp_path / "repo", tmp_path / "state")
    made.open(create=True)
    made.close()
    for path in files_below(tmp_path / "repo"):
        path.unlink()


def test_a_target_made_unencrypted_again_on_purpose_keeps_working(tmp_path):
    encrypted_then_emptied(tmp_path)
    with pytest.raises(ConfigError, match="this target held an encrypted repository"):
        Repository(LocalBackend(str(tmp_path / "repo")), tmp_path / "state", Protection(None)).open(create=True)
    again = server_repository(tmp_path / "repo", tmp_path / "state", encryption="none")
    again.open(create=True)
    assert again.config.version == 1
    for encryption in ("none", "auto"):
        server_repository(tmp_path / "repo", tmp_path / "state", encryption=encryption).open(create=True)


def test_a_target_once_encrypted_refuses_an_unencrypted_repository_under_any_id(tmp_path):
    encrypted_then_emptied(tmp_path)
    plain_repository(tmp_path / "repo")
    for encryption in ("auto", "none"):
        with pytest.raises(IntegrityError, match=r"was encrypted when this machine last opened it.*targets/"):
            server_repository(tmp_path / "repo", tmp_path / "state", encryption=encryption).open(create=True)
    with pytest.raises(IntegrityError, match="was encrypted"):
        server_repository(tmp_path / "repo", tmp_path / "state").open()  # not even read: it could be anything


@pytest.mark.parametrize(("field", "value"), [("pack_size", 1 << 21), ("chunker.min_size", 4096),
                                              ("chunker.avg_size", 1 << 21), ("chunker.normalization", 3)])
def test_a_config_whose_parameters_were_changed_fails_authentication(tmp_path, field, value):
    made = Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD))
    made.open(create=True)
    config = json.loads((tmp_path / "config").read_bytes())
    where = config
    *parents, name = field.split(".")
    for parent in parents:
        where = where[parent]
    where[name] = value
    (tmp_path / "config").write_text(json.dumps(config))
    repository._UNLOCKED.clear()
    with pytest.raises(IntegrityError, match=r"config of the repository .* fails authentication"):
        Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD)).open()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("pack_size", PACK_SIZE_MIN_ENCRYPTED - 1, "pack_size"), ("mac", None, "mac"), ("mac", "00", "mac"),
    ("chunker.seed", 7, "chunker.seed")])
def test_a_version_2_config_with_tiny_packs_a_seed_or_no_mac_is_refused(tmp_path, field, value, message):
    Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD)).open(create=True)
    config = json.loads((tmp_path / "config").read_bytes())
    where, name = (config["chunker"], "seed") if field == "chunker.seed" else (config, field)
    if value is None:
        del where[name]
    else:
        where[name] = value
    (tmp_path / "config").write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match=message):
        Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD)).open()


def test_the_chunker_seed_is_secret_and_differs_between_repositories():
    seeds = set()
    for _ in range(2):
        made = Repository(MemoryBackend(), None, Protection(PASSWORD))
        made.open(create=True)
        assert made.config.chunker.seed == 0 and b'"seed": 0' in made.backend.get_bytes("config", 10_000)
        seeds.add(made.chunker.seed)
    assert len(seeds) == 2 and all(0 < seed < 2**63 for seed in seeds)
    plain = Repository(MemoryBackend(), None, Protection(None))
    plain.open(create=True)
    assert plain.chunker == plain.config.chunker


def test_a_chunker_seed_the_chunker_cannot_take_is_refused_in_version_1(tmp_path):
    plain_repository(tmp_path)
    config = json.loads((tmp_path / "config").read_bytes())
    config["chunker"]["seed"] = 2**63
    (tmp_path / "config").write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match=r"chunker\.seed"):
        Repository(LocalBackend(str(tmp_path)), None).open()


def add_cheap_keys(path: Path, repository_id: str, count: int) -> None:
    """Key files for other passwords, as a server (or a past `key add`) may have put there."""
    for number in range(count):
        data = crypto.wrap_key(crypto.MasterKey.generate(), repository_id, f"other {number}", CHEAP)
        (path / "keys" / crypto.hashlib.sha256(data).hexdigest()).write_bytes(data)


def test_no_more_than_keys_max_key_files_are_tried(tmp_path, monkeypatch):
    made = Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD))
    made.open(create=True)
    add_cheap_keys(tmp_path, made.config.id, 3 * KEYS_MAX)
    (tmp_path / "keys" / made.key_id).unlink()  # ours is gone: every other key is tried in vain
    repository._UNLOCKED.clear()
    derived = []
    real = crypto.KeyFile.unwrap
    monkeypatch.setattr(crypto.KeyFile, "unwrap", lambda self, *args: derived.append(1) or real(self, *args))
    with pytest.raises(IntegrityError, match=rf"has {3 * KEYS_MAX} key files, more than the {KEYS_MAX} a reader"):
        Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD)).open()
    assert len(derived) == KEYS_MAX


def test_the_key_that_last_opened_the_target_is_tried_first(tmp_path, monkeypatch):
    """Key files sorting ahead of ours (names are hashes: a server can pick them) cost nothing."""
    made = Repository(LocalBackend(str(tmp_path / "repo")), tmp_path / "state", Protection(PASSWORD))
    made.open(create=True)
    add_cheap_keys(tmp_path / "repo", made.config.id, 3 * KEYS_MAX)
    repository._UNLOCKED.clear()
    derived = []
    real = crypto.KeyFile.unwrap
    monkeypatch.setattr(crypto.KeyFile, "unwrap", lambda self, *args: derived.append(self.id) or real(self, *args))
    again = Repository(LocalBackend(str(tmp_path / "repo")), tmp_path / "state", Protection(PASSWORD))
    again.open()
    assert derived == [made.key_id] and again.key_id == made.key_id


def test_wrong_password_among_few_keys_is_still_a_wrong_password(tmp_path):
    made = Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD))
    made.open(create=True)
    add_cheap_keys(tmp_path, made.config.id, 2)
    repository._UNLOCKED.clear()
    with pytest.raises(WrongPasswordError, match="wrong password"):
        Repository(LocalBackend(str(tmp_path)), None, Protection("not it")).open()


def test_key_add_refuses_beyond_keys_max(setup):
    tmp, _src, run = setup
    run.ok("backup")
    config = json.loads((tmp / "repo" / "config").read_bytes())
    add_cheap_keys(tmp / "repo", config["id"], KEYS_MAX - 1)
    run.env["BACKUP_NEW_REPOSITORY_PASSWORD"] = OTHER
    code, _out, err = run("key", "add")
    assert code == 1 and f"has {KEYS_MAX} keys" in err
    assert len(files_below(tmp / "repo" / "keys")) == KEYS_MAX


def test_every_key_file_damaged_is_said_as_such_not_as_a_wrong_password(setup):
    tmp, _src, run = damaged_setup(setup)
    for key in files_below(tmp / "repo" / "keys"):
        flip(key)
    code, _out, err = run("snapshots")
    assert code == 1 and "no key file of the encrypted repository" in err and "wrong password" not in err


def test_a_failed_head_start_is_not_taken_for_a_wrong_password(setup, monkeypatch):
    """An exact fault at an exact instant: scrypt fails in the head start's thread only."""
    _tmp, _src, run = setup
    run.ok("backup")
    repository._UNLOCKED.clear()
    real = crypto.KeyFile.unwrap

    def unwrap(self, *args):
        import threading

        if threading.current_thread().name == "key-unwrap":
            raise MemoryError("scrypt could not have its memory")
        return real(self, *args)

    monkeypatch.setattr(crypto.KeyFile, "unwrap", unwrap)
    run.ok("snapshots")


def test_key_changes_are_refused_beside_a_running_backup(setup):
    """Key changes take the exclusive lock: two removals at once cannot leave a repository keyless."""
    tmp, _src, run = setup
    run.ok("backup")
    run.env["BACKUP_NEW_REPOSITORY_PASSWORD"] = OTHER
    run.ok("key", "add")
    held = Repository(LocalBackend(str(tmp / "repo")), tmp / "other-state", Protection(PASSWORD))
    held.backend.open()
    held.open()
    keys = sorted(path.name for path in files_below(tmp / "repo" / "keys"))
    with locked(held, exclusive=False):
        for command in (("key", "add"), ("key", "passwd"), ("key", "remove", keys[0][:12])):
            code, _out, err = run(*command)
            assert code != 0 and "in use by" in err, (command, err)
    assert sorted(path.name for path in files_below(tmp / "repo" / "keys")) == keys
    held.close()


def test_two_processes_creating_one_repository_end_with_one_config_and_a_key_for_it(tmp_path):
    """The second creator takes the lock after the first has made the repository: it opens that one."""
    backend = str(tmp_path / "repo")
    first = Repository(LocalBackend(backend), tmp_path / "a", Protection(PASSWORD))
    second = Repository(LocalBackend(backend), tmp_path / "b", Protection(PASSWORD))
    for opened in (first, second):
        opened.backend.open()

    @contextlib.contextmanager
    def first_wins():
        first.open(create=True, exclusive=lambda: locked(first, exclusive=True))
        yield

    second.open(create=True, exclusive=first_wins)
    assert second.config == first.config and second.key_id == first.key_id
    assert len(files_below(tmp_path / "repo" / "keys")) == 1


def test_the_real_lock_keeps_a_second_creator_out(tmp_path):
    backend = str(tmp_path / "repo")
    first = Repository(LocalBackend(backend), tmp_path / "a", Protection(PASSWORD))
    first.backend.open()
    second = Repository(LocalBackend(backend), tmp_path / "b", Protection(PASSWORD))
    second.backend.open()
    with locked(first, exclusive=False), pytest.raises(RepositoryLockedError):
        second.open(create=True, exclusive=lambda: locked(second, exclusive=True))
    assert not (tmp_path / "repo" / "config").exists()


def test_key_remove_drops_the_state_folders_copy_of_the_removed_key(setup):
    tmp, _src, run = setup
    run.ok("backup")
    run.env["BACKUP_NEW_REPOSITORY_PASSWORD"] = OTHER
    run.ok("key", "add")
    repository._UNLOCKED.clear()
    other = {**run.env, "BACKUP_REPOSITORY_PASSWORD": OTHER}
    assert run("snapshots", env=other)[0] == 0  # the copy now names the other password's key
    (record,) = (tmp / "state" / "targets").glob("*.key")
    removed = json.loads(record.read_bytes())["key"]
    repository._UNLOCKED.clear()
    assert f"removed key {removed[:12]}" in run.ok("key", "remove", removed[:12])
    assert json.loads(record.read_bytes())["key"] != removed  # it follows the key that opened the target
    for path in files_below(tmp / "state"):
        assert removed.encode() not in path.read_bytes(), path


def test_key_passwd_leaves_no_copy_of_the_old_key_in_the_state_folder(setup):
    tmp, _src, run = setup
    run.ok("backup")
    (record,) = (tmp / "state" / "targets").glob("*.key")
    old = json.loads(record.read_bytes())["key"]
    run.env["BACKUP_NEW_REPOSITORY_PASSWORD"] = OTHER
    run.ok("key", "passwd")
    new = json.loads(record.read_bytes())["key"]
    assert new != old and (tmp / "repo" / "keys" / new).exists()
    for path in files_below(tmp / "state"):
        assert old.encode() not in path.read_bytes(), path


def test_a_tampered_snapshot_never_enters_the_cache(setup):
    tmp, _src, run = damaged_setup(setup)
    (snapshot,) = files_below(tmp / "repo" / "snapshots")
    flip(snapshot)
    run("snapshots")  # says the snapshot cannot be read
    opened = Repository(LocalBackend(str(tmp / "repo")), tmp / "fresh-state", Protection(PASSWORD))
    opened.backend.open()
    opened.open()
    assert opened.cache.get_snapshot(snapshot.name) is None
    opened.close()


def test_the_process_keeps_no_fast_test_of_the_password_and_dumps_no_core(setup):
    _tmp, _src, run = setup
    run.ok("backup")
    plain_digest = crypto.hashlib.sha256(PASSWORD.encode()).hexdigest()
    assert repository._UNLOCKED and all(plain_digest not in key for key in repository._UNLOCKED)
    shown = subprocess.run([sys.executable, "-c", "import resource, sys\nfrom watcher.cli import main\n"
                            "main(['health'], {'HOME': '/nonexistent'})\n"
                            "print(resource.getrlimit(resource.RLIMIT_CORE))"],
                           capture_output=True, text=True, check=False)
    assert shown.stdout.strip().endswith("(0, 0)"), shown


def test_a_config_changed_between_two_opens_of_one_process_is_refused(tmp_path):
    """The daemon opens its repositories again after a failed run, from keys it keeps: checked as well."""
    Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD)).open(create=True)
    assert repository._UNLOCKED
    config = json.loads((tmp_path / "config").read_bytes())
    config["pack_size"] *= 2
    (tmp_path / "config").write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match="fails authentication"):
        Repository(LocalBackend(str(tmp_path)), None, Protection(PASSWORD)).open()
