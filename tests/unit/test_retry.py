"""RetryingBackend around a backend that fails on purpose."""

from __future__ import annotations

import io
import threading
import time

import pytest

from watcher.backends.base import DEFAULT_LIMIT
from watcher.backends.memory import MemoryBackend
from watcher.errors import (
    AuthError,
    BackendError,
    ConnectionLostError,
    InterruptedRunError,
    NotFoundError,
    PermanentError,
    TemporaryFailureError,
)
from watcher.retry import RetryingBackend, RetryPolicy

FAST = RetryPolicy(attempts=4, initial_seconds=0.001, max_seconds=0.002)


class FlakyBackend(MemoryBackend):
    """Fails the next `failures[method]` calls of each method with `error()`; records every event.

    A failing `put` first reads part of its source, and a failing `get` first writes part of the
    object into its sink, as a connection dropped mid-transfer would.
    """

    def __init__(self, error=lambda: ConnectionLostError("connection reset"), **failures: int) -> None:
        super().__init__("flaky")
        self.error = error
        self.failures = dict(failures)
        self.calls: dict[str, int] = {}
        self.events: list[str] = []
        self.on_failure = lambda: None

    def _attempt(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            self.events.append(f"{method} failed")
            self.on_failure()
            raise self.error()
        self.events.append(method)

    def reconnect(self) -> None:
        self.events.append("reconnect")
        super().reconnect()

    def open(self) -> None:
        self._attempt("open")

    def put(self, key, source):
        if self.failures.get("put", 0) > 0:
            source.read(3)  # half an upload, then the connection drops
        self._attempt("put")
        super().put(key, source)

    def get(self, key, sink, limit=DEFAULT_LIMIT):
        if self.failures.get("get", 0) > 0:
            sink.write(self._data(key)[:2])
        self._attempt("get")
        super().get(key, sink, limit)

    def read_range(self, key, offset, length):
        self._attempt("read_range")
        return super().read_range(key, offset, length)

    def stat(self, key):
        self._attempt("stat")
        return super().stat(key)

    def list(self, prefix=""):
        self._attempt("list")
        return super().list(prefix)

    def delete(self, key):
        self._attempt("delete")
        super().delete(key)


def wrap(inner: FlakyBackend, policy: RetryPolicy = FAST, stop: threading.Event | None = None) -> RetryingBackend:
    return RetryingBackend(inner, policy, stop)


def test_transient_errors_are_retried_then_succeed():
    inner = FlakyBackend(put=2)
    wrap(inner).put_bytes("config", b"whole object")
    assert inner.objects["config"] == b"whole object"
    assert inner.calls["put"] == 3
    assert inner.events == ["put failed", "reconnect", "open", "put failed", "reconnect", "open", "put"]


@pytest.mark.parametrize("error", [lambda: ConnectionLostError("reset"), lambda: TemporaryFailureError("421")])
@pytest.mark.parametrize("method", ["get", "read_range", "stat", "list", "delete", "open"])
def test_every_operation_is_retried(method, error):
    inner = FlakyBackend(error=error, **{method: 2})
    inner.objects["data/one"] = b"0123456789"
    backend = wrap(inner)
    if method == "get":
        assert backend.get_bytes("data/one") == b"0123456789"
    elif method == "read_range":
        assert backend.read_range("data/one", 2, 3) == b"234"
    elif method == "stat":
        assert backend.stat("data/one").size == 10
    elif method == "list":
        assert [info.key for info in backend.list("data")] == ["data/one"]
    elif method == "delete":
        backend.delete("data/one")
        assert "data/one" not in inner.objects
    else:
        backend.open()
    assert inner.events.count(f"{method} failed") == 2
    assert inner.events.count("reconnect") == 2
    assert inner.events[-1] == method


def test_reconnect_comes_before_each_retry():
    inner = FlakyBackend(stat=3)
    inner.objects["config"] = b"x"
    wrap(inner).stat("config")
    failures = [index for index, event in enumerate(inner.events) if event == "stat failed"]
    assert len(failures) == 3
    for index in failures:
        assert inner.events[index + 1] == "reconnect"
    assert inner.events[-1] == "stat"


@pytest.mark.parametrize(
    "error",
    [lambda: AuthError("wrong password"), lambda: NotFoundError("gone"), lambda: PermanentError("marker only")],
)
def test_permanent_errors_are_not_retried(error):
    inner = FlakyBackend(error=error, put=5)
    with pytest.raises((BackendError, PermanentError)) as caught:
        wrap(inner).put_bytes("config", b"data")
    assert isinstance(caught.value, PermanentError)
    assert inner.calls["put"] == 1
    assert "reconnect" not in inner.events


def test_unmarked_backend_error_is_not_retried():
    inner = FlakyBackend(error=lambda: BackendError("something nobody translated"), stat=5)
    with pytest.raises(BackendError) as caught:
        wrap(inner).stat("config")
    assert type(caught.value) is BackendError
    assert inner.calls["stat"] == 1
    assert "reconnect" not in inner.events


def test_a_bug_is_not_retried():
    inner = FlakyBackend(error=lambda: ValueError("a bug"), list=5)
    with pytest.raises(ValueError):
        list(wrap(inner).list())
    assert inner.calls["list"] == 1


def test_missing_object_is_not_retried():
    inner = FlakyBackend()
    with pytest.raises(NotFoundError):
        wrap(inner).get_bytes("index/none")
    assert inner.calls["get"] == 1


def test_gives_up_after_attempts():
    inner = FlakyBackend(put=100)
    with pytest.raises(ConnectionLostError):
        wrap(inner, RetryPolicy(attempts=3, initial_seconds=0.001, max_seconds=0.002)).put_bytes("config", b"x")
    assert inner.calls["put"] == 3
    assert inner.events.count("reconnect") == 2
    assert "config" not in inner.objects


def test_one_attempt_means_no_retry():
    inner = FlakyBackend(put=1)
    with pytest.raises(ConnectionLostError):
        wrap(inner, RetryPolicy(attempts=1, initial_seconds=0.001, max_seconds=0.002)).put_bytes("config", b"x")
    assert inner.calls["put"] == 1


def test_put_rewinds_its_source():
    inner = FlakyBackend(put=2)
    wrap(inner).put("config", io.BytesIO(b"the whole object, not its tail"))
    assert inner.objects["config"] == b"the whole object, not its tail"


def test_put_rewinds_to_where_the_source_started():
    source = io.BytesIO(b"HEADERpayload")
    source.seek(6)
    inner = FlakyBackend(put=1)
    wrap(inner).put("data/x", source)
    assert inner.objects["data/x"] == b"payload"


def test_get_empties_the_sink_before_a_retry():
    inner = FlakyBackend(get=2)
    inner.objects["config"] = b"0123456789"
    sink = io.BytesIO()
    wrap(inner).get("config", sink)
    assert sink.getvalue() == b"0123456789"


def test_get_keeps_what_the_sink_held_before():
    inner = FlakyBackend(get=1)
    inner.objects["config"] = b"0123456789"
    sink = io.BytesIO()
    sink.write(b"earlier:")
    wrap(inner).get("config", sink)
    assert sink.getvalue() == b"earlier:0123456789"


def test_set_stop_event_interrupts_the_back_off():
    stop = threading.Event()
    inner = FlakyBackend(put=100)
    inner.on_failure = stop.set  # a shutdown request arrives while the operation fails
    slow = RetryPolicy(attempts=10, initial_seconds=60, max_seconds=120)
    started = time.monotonic()
    with pytest.raises(InterruptedRunError):
        wrap(inner, slow, stop).put_bytes("config", b"x")
    assert time.monotonic() - started < 5
    assert inner.calls["put"] == 1


def test_close_is_not_retried_and_describe_passes_through():
    inner = FlakyBackend()
    backend = wrap(inner)
    backend.close()
    assert backend.describe() == "memory://flaky"
    assert backend.scheme == "memory"


def test_connect_once_gives_up_as_soon_as_the_connection_cannot_be_opened():
    """The daemon's policy: a server that is gone costs one try, not the back-off, so that it holds up
    no other target; a connection that opens again is retried as usual."""
    policy = RetryPolicy(attempts=4, initial_seconds=0.001, max_seconds=0.002, connect_once=True)
    inner = FlakyBackend(put=1, open=5)
    with pytest.raises(ConnectionLostError):
        wrap(inner, policy).put_bytes("config", b"never stored")
    assert inner.events == ["put failed", "reconnect", "open failed"]
    inner = FlakyBackend(open=5)
    with pytest.raises(ConnectionLostError):
        wrap(inner, policy).open()
    assert inner.calls["open"] == 1
    inner = FlakyBackend(put=2)
    wrap(inner, policy).put_bytes("config", b"whole object")
    assert inner.objects["config"] == b"whole object"
