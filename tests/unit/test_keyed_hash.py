"""crypto's own HMAC-SHA256 (blob ids, HKDF) is the standard library's, byte for byte."""

from __future__ import annotations

import hmac
import os

import pytest

from watcher import crypto


@pytest.mark.parametrize("size", [0, 1, 31, 32, 63, 64, 65, 4096, 1 << 20])
def test_blob_ids_are_hmac_sha256_under_the_mac_key(size):
    master = crypto.MasterKey.generate()
    data = os.urandom(size)
    expected = hmac.digest(master.mac, data, "sha256").hex()
    assert master.blob_id(data) == master.blob_id(memoryview(data)) == expected
    assert master.blob_id(data) == expected  # the cached key blocks are not consumed by a call


@pytest.mark.parametrize("salt_size", [16, 32, 64, 65])
def test_hkdf_is_rfc_5869_with_one_expand_block(salt_size):
    ikm, salt = os.urandom(32), os.urandom(salt_size)
    prk = hmac.digest(salt, ikm, "sha256")
    assert crypto.hkdf(ikm, salt) == hmac.digest(prk, crypto.HKDF_INFO + b"\x01", "sha256")
