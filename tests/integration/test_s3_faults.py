"""Faults an S3 server shows only under load, at an exact instant: an HTTP server on 127.0.0.1 that
answers every request with one S3 error. It proves, request by request, that boto3 does not retry
on its own (each attempt of watcher's retry wrapper is one request) and that throttling and server
errors are retried while a refusal is not. Everything else runs against the real SeaweedFS."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from watcher.backends.s3 import S3Backend
from watcher.errors import PermissionDeniedError, TemporaryFailureError
from watcher.retry import RetryingBackend, RetryPolicy

pytestmark = pytest.mark.timeout(60)

ATTEMPTS = 3


class _Answering(ThreadingHTTPServer):
    daemon_threads = True
    status = 503
    code = "SlowDown"
    requests = 0


class _Handler(BaseHTTPRequestHandler):
    server: _Answering

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.requests += 1
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{self.server.code}</Code>'
                "<Message>as the test asked</Message></Error>").encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def answering() -> Iterator[_Answering]:
    server = _Answering(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, name="s3-fault-server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _backend(server: _Answering) -> RetryingBackend:
    inner = S3Backend("127.0.0.1", "bucket", "repo", port=server.server_address[1], key_id="KEY",
                      secret="S3-Secret-4711", tls=False, timeout=5, io_timeout=5)
    return RetryingBackend(inner, RetryPolicy(attempts=ATTEMPTS, initial_seconds=0.01, max_seconds=0.02))


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (400, "Throttling")])
def test_throttling_and_server_errors_are_retried_by_watcher_alone(answering, status, code):
    answering.status, answering.code = status, code
    backend = _backend(answering)
    try:
        with pytest.raises(TemporaryFailureError, match=code):
            backend.put_bytes("config", b"x")
    finally:
        backend.close()
    assert answering.requests == ATTEMPTS  # one request per attempt: boto3 tried each once


def test_a_refusal_is_not_retried(answering):
    answering.status, answering.code = 403, "AccessDenied"
    backend = _backend(answering)
    try:
        with pytest.raises(PermissionDeniedError, match="refused access"):
            backend.stat("config")
    finally:
        backend.close()
    assert answering.requests == 1
