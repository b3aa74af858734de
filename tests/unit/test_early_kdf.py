"""The start-up head start on scrypt (watcher.early_kdf): the same key as deriving it then, or nothing."""

from __future__ import annotations

import hashlib
import json

import pytest

from watcher import crypto, early_kdf

CHEAP = crypto.KdfParams(1 << 10, 8, 1)
PASSWORD = "a pass phrase"


@pytest.fixture(autouse=True)
def nothing_left_over():
    early_kdf.forget()
    yield
    early_kdf.forget()


def remembered(state, key_file: bytes, name: str = "a") -> None:
    """A key record as Repository._remember_key writes it."""
    (state / "targets").mkdir(parents=True, exist_ok=True)
    record = {"repository": "0" * 32, "key": hashlib.sha256(key_file).hexdigest(), "file": key_file.decode()}
    (state / "targets" / f"{name}.key").write_text(json.dumps(record))


def key_file() -> tuple[bytes, crypto.KeyFile]:
    data = crypto.wrap_key(crypto.MasterKey.generate(), "0" * 32, PASSWORD, CHEAP)
    return data, crypto.decode_key_file(hashlib.sha256(data).hexdigest(), data)


def test_the_head_start_gives_the_key_scrypt_gives(tmp_path):
    data, key = key_file()
    remembered(tmp_path, data)
    early_kdf.start({"BACKUP_REPOSITORY_PASSWORD": PASSWORD, "BACKUP_STATE_DIR": str(tmp_path)}, ["backup"])
    expected = hashlib.scrypt(PASSWORD.encode(), salt=key.salt, n=CHEAP.n, r=CHEAP.r, p=CHEAP.p, dklen=32)
    assert early_kdf.take(PASSWORD, key.salt, CHEAP.n, CHEAP.r, CHEAP.p, 32) == expected
    assert early_kdf.take(PASSWORD, key.salt, CHEAP.n, CHEAP.r, CHEAP.p, 32) is None  # taken once


def test_derive_takes_the_head_start_and_the_key_opens(tmp_path):
    data, key = key_file()
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    remembered(tmp_path, data)
    early_kdf.start({"BACKUP_REPOSITORY_PASSWORD_FILE": str(password_file), "BACKUP_STATE_DIR": str(tmp_path)},
                    ["-v", "restore", "latest"])
    assert early_kdf._started  # begun
    assert key.unwrap(PASSWORD, "0" * 32) is not None
    assert not early_kdf._started  # and taken by derive


@pytest.mark.parametrize("environment", [
    {"BACKUP_STATE_DIR": "STATE"},  # no password
    {"BACKUP_REPOSITORY_PASSWORD": PASSWORD},  # no state folder named
])
def test_no_head_start_without_password_or_state_folder(tmp_path, environment):
    data, _ = key_file()
    remembered(tmp_path, data)
    early_kdf.start({name: value.replace("STATE", str(tmp_path)) for name, value in environment.items()}, ["backup"])
    assert not early_kdf._started


def test_no_head_start_with_several_records_or_a_damaged_or_greedy_one(tmp_path):
    environment = {"BACKUP_REPOSITORY_PASSWORD": PASSWORD, "BACKUP_STATE_DIR": str(tmp_path)}
    data, _ = key_file()
    remembered(tmp_path, data, "a")
    remembered(tmp_path, data, "b")
    early_kdf.start(environment, ["backup"])
    assert not early_kdf._started
    (tmp_path / "targets" / "b.key").unlink()
    (tmp_path / "targets" / "a.key").write_text("{not json")
    early_kdf.start(environment, ["backup"])
    assert not early_kdf._started
    document = json.loads(data)
    document["n"] = 1 << 22  # 4 GiB of scrypt: more than a key file may ask
    remembered(tmp_path, json.dumps(document).encode(), "a")
    early_kdf.start(environment, ["backup"])
    assert not early_kdf._started


def test_another_password_does_not_get_the_head_start(tmp_path):
    data, key = key_file()
    remembered(tmp_path, data)
    early_kdf.start({"BACKUP_REPOSITORY_PASSWORD": PASSWORD, "BACKUP_STATE_DIR": str(tmp_path)}, ["backup"])
    assert early_kdf.take("another", key.salt, CHEAP.n, CHEAP.r, CHEAP.p, 32) is None
    assert key.unwrap("another", "0" * 32) is None


@pytest.mark.parametrize("arguments", [[], ["health"], ["doctor"], ["--help"], ["backup", "--help"],
                                       ["--env-file", "x", "backup"], ["--env-file=x", "backup"]])
def test_no_head_start_for_commands_that_do_not_open_a_repository_first(tmp_path, arguments):
    data, _ = key_file()
    remembered(tmp_path, data)
    early_kdf.start({"BACKUP_REPOSITORY_PASSWORD": PASSWORD, "BACKUP_STATE_DIR": str(tmp_path)}, arguments)
    assert not early_kdf._started
