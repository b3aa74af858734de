"""Faults an S3 server shows only under load, at an exact instant: HTTP servers on 127.0.0.1 that
answer with the S3 errors a test asks for. They prove, request by request, that boto3 does not retry
on its own (each attempt of watcher's retry wrapper is one request), that throttling and server
errors are retried while a refusal is not, that an upload sent again carries its whole body, and
that the daemon leaves a server that went away after asking it once more. Everything else runs
against the real SeaweedFS."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from watcher.backends.s3 import S3Backend
from watcher.errors import ConnectionLostError, PermissionDeniedError, TemporaryFailureError
from watcher.pack import PiecesReader
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


class _Scripted(ThreadingHTTPServer):
    """Answers each upload of an object with the next of `answers` ((status, S3 error code)), and
    every other request with 200; records every upload's body and Content-MD5. HTTP/1.1, so that
    `Expect: 100-continue` is answered first, as S3 servers and their proxies do, before the body."""

    daemon_threads = True

    def __init__(self, answers: list[tuple[int, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.answers = answers
        self.puts: list[tuple[str, bytes, str]] = []


class _ScriptedHandler(BaseHTTPRequestHandler):
    server: _Scripted
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, code = 200, ""
        if self.command == "PUT" and self.path.strip("/").count("/"):  # an object's, not the bucket's
            self.server.puts.append((self.path, body, self.headers.get("Content-MD5", "")))
            status, code = self.server.answers.pop(0) if self.server.answers else (200, "")
        reply = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                 "<Message>as the test asked</Message></Error>").encode() if code else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(reply)))
        self.send_header("Connection", "close")  # no connection outlives the server's shutdown
        self.end_headers()
        self.wfile.write(reply)
        self.close_connection = True

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="s3-scripted-server")
    thread.start()
    return thread


def _end(server: ThreadingHTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024])  # sent as bytes; streamed from the pack's pieces
@pytest.mark.parametrize("first", [(404, "NoSuchBucket"), (503, "SlowDown")])
def test_an_upload_sent_again_sends_the_whole_object(size, first):
    """After a missing bucket is created, or a throttled PUT is tried again, the next PUT carries
    every byte again (a body read to its end by the first try would go as an empty object under an
    MD5 that a lax server does not check)."""
    data = os.urandom(size)
    server = _Scripted([first])
    thread = _serve(server)
    inner = S3Backend("127.0.0.1", "bucket", "repo", port=server.server_address[1], key_id="KEY",
                      secret="S3-Secret-4711", tls=False, timeout=5, io_timeout=5)
    backend = RetryingBackend(inner, RetryPolicy(attempts=ATTEMPTS, initial_seconds=0.01, max_seconds=0.02))
    try:
        backend.put("packs/ab/abcd", PiecesReader([data[: size // 3], data[size // 3 :]]))
    finally:
        backend.close()
        _end(server, thread)
    objects = [(body, md5) for path, body, md5 in server.puts if path.endswith("/packs/ab/abcd")]
    digest = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert [len(body) for body, _ in objects] == [size, size]
    assert all(body == data and md5 == digest for body, md5 in objects)


def test_a_server_gone_is_asked_once_more_by_the_daemon_then_left(caplog):
    """The daemon's policy (`connect_once`): after a failed request, the retry asks the server again
    as connecting does (the client is kept, shared by the upload threads); a server that does not
    answer then ends the operation at once instead of after every attempt and wait, so that it does
    not hold up the other targets."""
    server = _Scripted([])
    thread = _serve(server)
    inner = S3Backend("127.0.0.1", "bucket", "repo", port=server.server_address[1], key_id="KEY",
                      secret="S3-Secret-4711", tls=False, timeout=2, io_timeout=2)
    policy = RetryPolicy(attempts=4, initial_seconds=0.01, max_seconds=0.02, connect_once=True)
    backend = RetryingBackend(inner, policy)
    try:
        backend.open()
        _end(server, thread)  # the server goes away; the client stays
        with pytest.raises(ConnectionLostError, match="cannot reach the S3 server"):
            backend.put_bytes("config", b"x")
    finally:
        backend.close()
    retries = [record for record in caplog.records if "attempt 2 of 4" in record.getMessage()]
    assert len(retries) == 1
    assert not any("attempt 3 of 4" in record.getMessage() for record in caplog.records)
