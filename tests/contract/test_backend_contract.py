"""One suite for the backend contract (watcher/backends/base.py), run over every backend.

As restic runs one test suite over all its backends: what the repository relies on is written
once, so a backend cannot quietly differ (listing order, hidden temporary names, atomic puts,
NotFoundError on absence). The SFTP case runs against the real sshd of tests/fixtures/sftp.py,
the FTP and FTPS cases against the real vsftpd of tests/fixtures/ftp.py, the S3 case against
the real SeaweedFS of tests/fixtures/s3.py (over HTTPS).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from watcher.backends.base import Backend, ObjectInfo, temp_name
from watcher.backends.local import LocalBackend
from watcher.backends.memory import MemoryBackend
from watcher.backends.s3 import S3Backend
from watcher.errors import BackendConfigError, IntegrityError, NotFoundError, PermissionDeniedError

pytestmark = pytest.mark.timeout(120)

KINDS = ("memory", "local", "sftp", "ftp", "ftps", "s3")
BAD_KEYS = ["../x", "a//b", "a/.b", "x\r\nDELE y", "", "/abs", "a/", ".hidden", "a/../b", "a/b\x00"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    if kind == "memory":
        subject: Backend = MemoryBackend()
    elif kind == "local":
        subject = LocalBackend(tmp_path / "repository")
    else:
        subject = request.getfixturevalue(f"{kind}_backend")
    subject.open()
    try:
        yield subject
    finally:
        subject.close()


@pytest.fixture
def plant(kind: str, backend: Backend) -> Callable[[str, bytes], None]:
    """Writes a file under a raw name, bypassing key checks: what a crashed upload leaves."""
    if kind == "memory":
        assert isinstance(backend, MemoryBackend)

        def plant_memory(name: str, data: bytes) -> None:
            backend.stray[name] = (data, time.time())

        return plant_memory
    if kind == "local":
        assert isinstance(backend, LocalBackend)

        def plant_local(name: str, data: bytes) -> None:
            path = backend.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        return plant_local
    if kind == "sftp":

        def plant_sftp(name: str, data: bytes) -> None:
            session = backend._session()  # type: ignore[attr-defined]
            folder = f"{backend.root}/{os.path.dirname(name)}".rstrip("/")  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):  # SFTP says only "Failure" when it exists
                session.mkdir(folder)
            with session.open(f"{backend.root}/{name}", "wb") as file:  # type: ignore[attr-defined]
                file.write(data)

        return plant_sftp
    if kind in ("ftp", "ftps"):

        def plant_ftp(name: str, data: bytes) -> None:
            session = backend._session()  # type: ignore[attr-defined]
            path = f"{backend.root}/{name}"  # type: ignore[attr-defined]
            session.makedirs(os.path.dirname(path))
            session.storbinary(f"STOR {path}", io.BytesIO(data))

        return plant_ftp
    if kind == "s3":
        assert isinstance(backend, S3Backend)

        def plant_s3(name: str, data: bytes) -> None:
            backend._create_bucket()
            backend._client.put_object(Bucket=backend.bucket, Key=backend._full(name), Body=data)

        return plant_s3
    pytest.skip(f"a {kind} backend cannot hold a name that is not a key")


@pytest.fixture
def backdate(kind: str, backend: Backend) -> Callable[[str, float], None]:
    """Sets when a planted name was last written (the test servers' files are on this machine)."""
    if kind == "memory":
        assert isinstance(backend, MemoryBackend)

        def backdate_memory(name: str, mtime: float) -> None:
            backend.stray[name] = (backend.stray[name][0], mtime)

        return backdate_memory
    if kind == "s3":
        pytest.skip("an S3 server sets an object's time itself")
    root = Path(str(backend.root))  # type: ignore[attr-defined]

    def backdate_file(name: str, mtime: float) -> None:
        if not (root / name).is_file():
            pytest.skip("the server's files are not on this machine")
        os.utime(root / name, (mtime, mtime))

    return backdate_file


@pytest.fixture
def link(kind: str, backend: Backend, request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """Makes `name` a symbolic link to `target` on the server's disk: what a hostile user with
    write access to the repository's folder (or a damaged disk) leaves."""
    if kind in ("memory", "s3"):
        pytest.skip(f"a {kind} backend holds no links")
    if kind == "sftp":

        def link_sftp(name: str, target: str) -> None:
            session = backend._session()  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                session.mkdir(f"{backend.root}/{os.path.dirname(name)}".rstrip("/"))  # type: ignore[attr-defined]
            session.symlink(target, f"{backend.root}/{name}")  # type: ignore[attr-defined]

        return link_sftp
    if kind in ("ftp", "ftps"):
        request.getfixturevalue(f"{kind}_server").need_local()
    root = Path(backend.root)  # type: ignore[attr-defined]

    def link_on_disk(name: str, target: str) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)

    return link_on_disk


class BrokenSource(io.RawIOBase):
    """Gives `good` bytes, then fails as a file that vanished or a disk that died would."""

    def __init__(self, good: bytes) -> None:
        self.good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = self.good.readinto(buffer)
        if count == 0:
            raise SourceBrokeError("the source failed in the middle")
        return count


class SourceBrokeError(Exception):
    pass


class TrickleSource(io.RawIOBase):
    """A non-seekable stream that returns fewer bytes than asked, as pipes and sockets do."""

    def __init__(self, data: bytes, piece: int = 1000) -> None:
        self.data = io.BytesIO(data)
        self.piece = piece

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self.data.readinto(memoryview(buffer)[: self.piece])


def payload(size: int) -> bytes:
    return os.urandom(size)


# -- put / get ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4096, 3 * 1024 * 1024 + 17], ids=["empty", "1B", "4KiB", "3MiB"])
def test_put_get_roundtrip(backend: Backend, size: int) -> None:
    data = payload(size)
    backend.put("data/object", io.BytesIO(data))
    sink = io.BytesIO()
    backend.get("data/object", sink)
    assert sink.getvalue() == data
    assert backend.stat("data/object") == ObjectInfo("data/object", size)


def test_put_reads_the_source_to_its_end(backend: Backend) -> None:
    data = payload(300_000)
    backend.put("trickle", TrickleSource(data))  # type: ignore[arg-type]
    assert backend.get_bytes("trickle") == data


def test_put_replaces(backend: Backend) -> None:
    backend.put_bytes("k", b"first version, longer")
    backend.put_bytes("k", b"second")
    assert backend.get_bytes("k") == b"second"
    assert [info.key for info in backend.list()] == ["k"]


def test_put_creates_folders(backend: Backend) -> None:
    backend.put_bytes("a/b/c/d/e", b"deep")
    backend.put_bytes("a/b/other", b"sibling")
    assert backend.get_bytes("a/b/c/d/e") == b"deep"
    assert backend.get_bytes("a/b/other") == b"sibling"


def test_failed_source_leaves_nothing_under_the_key(backend: Backend) -> None:
    with pytest.raises(SourceBrokeError):
        backend.put("data/new", BrokenSource(payload(1024 * 1024)))  # type: ignore[arg-type]
    assert not backend.exists("data/new")
    assert list(backend.list()) == []


def test_failed_source_keeps_the_previous_version(backend: Backend) -> None:
    backend.put_bytes("config", b"old and sound")
    with pytest.raises(SourceBrokeError):
        backend.put("config", BrokenSource(payload(700_000)))  # type: ignore[arg-type]
    assert backend.get_bytes("config") == b"old and sound"
    assert [info.key for info in backend.list()] == ["config"]


def test_get_refuses_more_than_its_limit(backend: Backend) -> None:
    data = payload(300_000)
    backend.put_bytes("big", data)
    assert backend.get_bytes("big", 300_000) == data
    with pytest.raises(IntegrityError, match="big"):
        backend.get_bytes("big", 299_999)
    sink = io.BytesIO()
    with pytest.raises(IntegrityError, match="big"):
        backend.get("big", sink, 1000)
    assert len(sink.getvalue()) <= 1000
    assert backend.get_bytes("big") == data  # the connection is still usable


def test_a_link_to_an_endless_device_is_refused(backend: Backend, link: Callable[[str, str], None]) -> None:
    backend.put_bytes("data/real", b"x")
    link("data/zero", "/dev/zero")
    for _ in range(2):
        with pytest.raises((IntegrityError, NotFoundError, PermissionDeniedError)):
            backend.get_bytes("data/zero", 1 << 20)
        with pytest.raises((IntegrityError, NotFoundError, PermissionDeniedError)):
            backend.get("data/zero", io.BytesIO(), 1 << 20)
    assert [info.key for info in backend.list()] == ["data/real"]
    assert backend.get_bytes("data/real") == b"x"


def test_get_missing(backend: Backend) -> None:
    with pytest.raises(NotFoundError):
        backend.get("absent", io.BytesIO())
    with pytest.raises(NotFoundError):
        backend.get("no/such/folder/absent", io.BytesIO())


# -- read_range --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 10), (1000, 5000), (0, 2 * 1024 * 1024 + 3), (123_456, 1_500_000), (2 * 1024 * 1024 + 3, 0)],
)
def test_read_range(backend: Backend, offset: int, length: int) -> None:
    data = payload(2 * 1024 * 1024 + 3)
    backend.put_bytes("pack", data)
    assert backend.read_range("pack", offset, length) == data[offset : offset + length]


@pytest.mark.parametrize(("offset", "length"), [(90, 11), (100, 1), (5000, 10), (0, 1_000_000)])
def test_read_range_beyond_the_end(backend: Backend, offset: int, length: int) -> None:
    backend.put_bytes("pack", payload(100))
    with pytest.raises(NotFoundError):
        backend.read_range("pack", offset, length)


def test_read_range_missing(backend: Backend) -> None:
    with pytest.raises(NotFoundError):
        backend.read_range("absent", 0, 1)


# -- stat / exists -----------------------------------------------------------------------


def test_stat_and_exists(backend: Backend) -> None:
    backend.put_bytes("a/b", b"12345")
    assert backend.stat("a/b") == ObjectInfo("a/b", 5)
    assert backend.exists("a/b")
    assert not backend.exists("a/c")
    assert not backend.exists("zz/top")
    with pytest.raises(NotFoundError):
        backend.stat("a/c")


# -- list --------------------------------------------------------------------------------


def test_list_is_recursive_and_sorted(backend: Backend) -> None:
    keys = ["snapshots/2", "data/ff/ff01", "data/00/0001", "config", "data/00/0000", "data/0a/0a00", "ab"]
    for number, key in enumerate(keys):
        backend.put_bytes(key, b"x" * number)
    listed = list(backend.list())
    assert [info.key for info in listed] == sorted(keys)
    assert {info.key: info.size for info in listed} == {key: number for number, key in enumerate(keys)}


def test_list_prefix_is_a_folder(backend: Backend) -> None:
    for key in ["data/00/0001", "data/01/0100", "database", "dat/x", "snapshots/1"]:
        backend.put_bytes(key, b"x")
    assert [info.key for info in backend.list("data")] == ["data/00/0001", "data/01/0100"]
    assert [info.key for info in backend.list("data/01")] == ["data/01/0100"]


def test_list_missing_prefix_yields_nothing(backend: Backend) -> None:
    assert list(backend.list("nothing/here")) == []
    assert list(backend.list()) == []
    backend.put_bytes("data/1", b"x")
    assert list(backend.list("nothing")) == []


def test_list_hides_temporary_and_foreign_names(backend: Backend, plant: Callable[[str, bytes], None]) -> None:
    backend.put_bytes("data/real", b"x")
    plant(temp_name("data/half-uploaded"), b"partial")
    plant(temp_name("top"), b"partial")
    plant(".DS_Store", b"junk")
    assert [info.key for info in backend.list()] == ["data/real"]
    assert [info.key for info in backend.list("data")] == ["data/real"]


def test_list_temporary_gives_leftovers_with_their_time(backend: Backend, plant: Callable[[str, bytes], None],
                                                        backdate: Callable[[str, float], None]) -> None:
    backend.put_bytes("data/real", b"x")
    old, fresh = temp_name("data/ab/half-uploaded"), temp_name("top")
    for name in (old, fresh, ".DS_Store", "data/.hidden", "data/.x.tmp-not-hex-digits"):
        plant(name, b"partial")
    three_days_ago = time.time() - 3 * 86400
    backdate(old, three_days_ago)
    listed = list(backend.list_temporary())
    assert [info.name for info in listed] == sorted([old, fresh])  # only what `temp_name` makes
    times = {info.name: info.mtime for info in listed}
    assert times[old] is not None and abs(times[old] - three_days_ago) < 5
    assert times[fresh] is not None and abs(times[fresh] - time.time()) < 600
    assert [info.key for info in backend.list()] == ["data/real"]


def test_delete_temporary(backend: Backend, plant: Callable[[str, bytes], None]) -> None:
    backend.put_bytes("data/real", b"x")
    left = temp_name("data/real")
    plant(left, b"partial")
    plant(".DS_Store", b"junk")
    backend.delete_temporary(left)
    assert list(backend.list_temporary()) == []
    with pytest.raises(NotFoundError):
        backend.delete_temporary(left)
    for name in ("data/real", ".DS_Store", "../" + left, "data/../" + left, ""):
        with pytest.raises(BackendConfigError):
            backend.delete_temporary(name)
    assert backend.get_bytes("data/real") == b"x"


def test_list_temporary_of_an_empty_target(backend: Backend) -> None:
    assert list(backend.list_temporary()) == []


# -- delete ------------------------------------------------------------------------------


def test_delete(backend: Backend) -> None:
    backend.put_bytes("a/b", b"x")
    backend.put_bytes("a/c", b"y")
    backend.delete("a/b")
    assert not backend.exists("a/b")
    assert [info.key for info in backend.list()] == ["a/c"]


def test_delete_missing(backend: Backend) -> None:
    with pytest.raises(NotFoundError):
        backend.delete("absent")
    with pytest.raises(NotFoundError):
        backend.delete("no/such/folder")


# -- keys and description ----------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_refused(backend: Backend, key: str) -> None:
    operations: list[Callable[[], object]] = [
        lambda: backend.put_bytes(key, b"x"),
        lambda: backend.get_bytes(key),
        lambda: backend.read_range(key, 0, 1),
        lambda: backend.stat(key),
        lambda: backend.delete(key),
    ]
    if key:  # an empty prefix lists everything
        operations.append(lambda: list(backend.list(key)))
    for operation in operations:
        with pytest.raises(BackendConfigError):
            operation()
    assert list(backend.list()) == []


def test_temporary_names_are_not_keys(backend: Backend) -> None:
    with pytest.raises(BackendConfigError):
        backend.put_bytes(temp_name("data/x"), b"x")


def test_describe_has_no_password(kind: str, backend: Backend, request: pytest.FixtureRequest) -> None:
    description = backend.describe()
    assert description.startswith(f"{backend.scheme}://")
    if kind in ("sftp", "ftp", "ftps"):
        server = request.getfixturevalue({"sftp": "sshd_server"}.get(kind, f"{kind}_server"))
        assert server.password not in description
        assert server.password not in repr(backend)
    if kind == "s3":
        secret = request.getfixturevalue("s3_server").secret
        assert secret not in description and secret not in repr(backend)
