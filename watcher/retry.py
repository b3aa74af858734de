"""Operation-level retries: one tenacity policy, one wrapper around any backend.

Only errors marked `TransientError` are retried; before each new attempt the connection is
reopened and the data source rewound (or the sink emptied), so a retried upload never
appends to a half-written one. A stop event cuts any back-off short (SIGTERM never waits).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from watcher.backends.base import DEFAULT_LIMIT, Backend, ObjectInfo, TemporaryInfo
from watcher.errors import InterruptedRunError, is_transient

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_seconds: float = 1.0
    max_seconds: float = 20.0
    # A connection that cannot be opened again fails at once, no waits: for the daemon, which tries the
    # whole run again later per target, so that a server that is gone does not hold up the other targets.
    connect_once: bool = False


# Seconds-scale retries of one operation; the daemon adds minutes-scale retries of whole runs.
# Tests shorten the waits by replacing this module attribute.
DEFAULT_POLICY = RetryPolicy()


class RetryingBackend(Backend):
    """Wraps a backend; every method but `close` is retried on transient errors."""

    def __init__(self, inner: Backend, policy: RetryPolicy | None = None, stop: threading.Event | None = None):
        self.inner = inner
        self.scheme = inner.scheme
        self.concurrent_puts = inner.concurrent_puts
        self.policy = policy or DEFAULT_POLICY
        self.stop = stop or threading.Event()

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise InterruptedRunError("stopped while waiting to retry")

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("%s; attempt %d of %d in %.1f s", error, state.attempt_number + 1, self.policy.attempts,
                    state.upcoming_sleep)

    def _call(self, operation: Callable[[], T], reset: Callable[[], None] | None = None,
              connecting: bool = False) -> T:
        gone = False  # with `connect_once`: the connection could not be opened, nothing more to try

        def worth_retrying(error: BaseException) -> bool:
            return is_transient(error) and not gone

        def connect(action: Callable[[], T]) -> T:
            nonlocal gone
            try:
                return action()
            except BaseException:
                gone = self.policy.connect_once
                raise

        retrying = Retrying(
            retry=retry_if_exception(worth_retrying),
            stop=stop_after_attempt(self.policy.attempts),
            wait=wait_exponential_jitter(multiplier=self.policy.initial_seconds, max=self.policy.max_seconds,
                                         jitter=self.policy.initial_seconds),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    if reset is not None:
                        reset()
                    connect(self.inner.reconnect)
                return connect(operation) if connecting else operation()
        raise AssertionError("unreachable")  # pragma: no cover

    def open(self) -> None:
        self._call(self.inner.open, connecting=True)

    def close(self) -> None:
        self.inner.close()

    def reconnect(self) -> None:
        self._call(self.inner.reconnect, connecting=True)

    def put(self, key: str, source: BinaryIO) -> None:
        start = source.tell()
        self._call(lambda: self.inner.put(key, source), lambda: source.seek(start))

    def get(self, key: str, sink: BinaryIO, limit: int = DEFAULT_LIMIT) -> None:
        start = sink.tell()

        def reset() -> None:
            sink.seek(start)
            sink.truncate()

        self._call(lambda: self.inner.get(key, sink, limit), reset)

    def get_bytes(self, key: str, limit: int = DEFAULT_LIMIT) -> bytes:
        return self._call(lambda: self.inner.get_bytes(key, limit))  # the backend may have a faster way

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self._call(lambda: self.inner.read_range(key, offset, length))

    def stat(self, key: str) -> ObjectInfo:
        return self._call(lambda: self.inner.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._call(lambda: list(self.inner.list(prefix))))

    def delete(self, key: str) -> None:
        self._call(lambda: self.inner.delete(key))

    def list_temporary(self) -> Iterator[TemporaryInfo]:
        return iter(self._call(lambda: list(self.inner.list_temporary())))

    def delete_temporary(self, name: str) -> None:
        self._call(lambda: self.inner.delete_temporary(name))

    def describe(self) -> str:
        return self.inner.describe()
