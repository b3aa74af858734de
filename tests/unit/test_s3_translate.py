"""The S3 translation table: every error code, status and exception of botocore, urllib3 and the
socket layer maps to the error class that decides whether it is retried. No sockets (the same
errors from a real SeaweedFS are in tests/integration/test_s3_errors.py)."""

from __future__ import annotations

import socket
import ssl

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from urllib3.exceptions import ProtocolError

from watcher.backends import create_backend
from watcher.backends.s3 import S3Backend
from watcher.backends.s3_errors import translate
from watcher.config import load_settings
from watcher.errors import (
    AuthError,
    BackendConfigError,
    BackendError,
    ConnectionLostError,
    NotFoundError,
    PermanentError,
    PermissionDeniedError,
    StorageFullError,
    TemporaryFailureError,
    TransientError,
    TrustError,
)

pytestmark = pytest.mark.timeout(30)

SECRET = "S3-Secret-Key-4711"
URL = "https://127.0.0.1:9000"


def reply(code: str, status: int, message: str = "something") -> ClientError:
    error = {"Code": code, "Message": message} if code else {}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (reply("SlowDown", 503), TemporaryFailureError),
        (reply("Throttling", 400), TemporaryFailureError),
        (reply("ThrottlingException", 400), TemporaryFailureError),
        (reply("RequestLimitExceeded", 400), TemporaryFailureError),
        (reply("", 503), TemporaryFailureError),  # a HEAD answer: no body, only the status
        (reply("", 429), TemporaryFailureError),
        (reply("InternalError", 500), TemporaryFailureError),
        (reply("", 502), TemporaryFailureError),
        (reply("", 504), TemporaryFailureError),
        (reply("ServiceUnavailable", 503), TemporaryFailureError),
        (reply("RequestTimeout", 400), TemporaryFailureError),
        (reply("BadDigest", 400), TemporaryFailureError),
        (reply("AccessDenied", 403), PermissionDeniedError),
        (reply("", 403), PermissionDeniedError),
        (reply("AllAccessDisabled", 403), PermissionDeniedError),
        (reply("SignatureDoesNotMatch", 403), AuthError),
        (reply("InvalidAccessKeyId", 403), AuthError),
        (reply("ExpiredToken", 400), AuthError),
        (reply("NoSuchBucket", 404), NotFoundError),
        (reply("NoSuchKey", 404), NotFoundError),
        (reply("404", 404), NotFoundError),
        (reply("", 404), NotFoundError),
        (reply("InvalidRange", 416), NotFoundError),
        (reply("PermanentRedirect", 301), BackendConfigError),
        (reply("AuthorizationHeaderMalformed", 400), BackendConfigError),
        (reply("InvalidBucketName", 400), BackendConfigError),
        (reply("RequestTimeTooSkewed", 403), BackendConfigError),
        (reply("QuotaExceeded", 403), StorageFullError),
        (reply("XMinioStorageFull", 507), TemporaryFailureError),  # 5xx: the space may come back
        (EndpointConnectionError(endpoint_url=URL), ConnectionLostError),
        (ConnectTimeoutError(endpoint_url=URL), ConnectionLostError),
        (ReadTimeoutError(endpoint_url=URL), ConnectionLostError),
        (ConnectionClosedError(endpoint_url=URL), ConnectionLostError),
        (ResponseStreamingError(error=ProtocolError("Connection broken")), ConnectionLostError),
        (ProtocolError("Connection aborted"), ConnectionLostError),
        (ConnectionResetError(104, "Connection reset by peer"), ConnectionLostError),
        (TimeoutError("timed out"), ConnectionLostError),
        (socket.gaierror(-2, "Name or service not known"), ConnectionLostError),
        (SSLError(endpoint_url=URL, error="[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
                                          "self-signed certificate"), TrustError),
        (SSLError(endpoint_url=URL, error="[SSL: WRONG_VERSION_NUMBER] wrong version number"), BackendConfigError),
        (ssl.SSLCertVerificationError(1, "certificate verify failed: Hostname mismatch"), TrustError),
        (NoCredentialsError(), BackendConfigError),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else type(value).__name__ + (
        f"-{value.response['Error'].get('Code', '')}-{value.response['ResponseMetadata']['HTTPStatusCode']}"
        if isinstance(value, ClientError) else ""),
)
def test_table(error: BaseException, expected: type[BackendError]) -> None:
    translated = translate(error, "packs/ab/abcd", bucket="backups")
    assert type(translated) is expected
    assert isinstance(translated, (TransientError, PermanentError))
    assert "\n" not in str(translated) and str(translated).startswith("packs/ab/abcd: ")


def test_a_tls_failure_while_connecting_is_permanent_and_later_transient() -> None:
    error = SSLError(endpoint_url=URL, error="[SSL: DECRYPTION_FAILED] decryption failed")
    assert isinstance(translate(error, "x", connecting=True), PermanentError)
    assert isinstance(translate(error, "x"), TransientError)


def test_unknown_errors_stay_unmarked() -> None:
    for error in (reply("WeirdNewCode", 400), ValueError("boom"), KeyError("k")):
        translated = translate(error, "x")
        assert type(translated) is BackendError and not isinstance(translated, (TransientError, PermanentError))


def test_messages_name_the_bucket_and_the_advice() -> None:
    assert "backups" in str(translate(reply("NoSuchBucket", 404), "x", bucket="backups"))
    assert "BACKUP_TLS_CA_FILE" in str(translate(
        SSLError(endpoint_url=URL, error="certificate verify failed"), "x"))
    assert "s3+http://" in str(translate(SSLError(endpoint_url=URL, error="wrong version number"), "x"))
    assert "AWS_REGION" in str(translate(reply("PermanentRedirect", 301), "x"))


def test_the_registry_builds_an_s3_backend_without_the_secret_in_sight() -> None:
    settings = load_settings({"BACKUP_TARGET": "s3://KEY@s3.example.org:9000/bucket/some/prefix",
                              "BACKUP_TARGET_PASSWORD": SECRET, "AWS_REGION": "eu-west-3"})
    backend = create_backend(settings)
    assert isinstance(backend, S3Backend)
    assert (backend.bucket, backend.prefix, backend.port) == ("bucket", "some/prefix", 9000)
    assert backend.region == "eu-west-3"
    assert backend.describe() == "s3://KEY@s3.example.org:9000/bucket/some/prefix"
    assert SECRET not in repr(backend) and SECRET not in backend.describe()
    plain = create_backend(load_settings({"BACKUP_TARGET": "s3+http://KEY@h/bucket", "BACKUP_TARGET_PASSWORD": "x"}))
    assert plain.scheme == "s3+http" and plain.endpoint == "http://h:80"  # type: ignore[attr-defined]


def test_boto3_does_not_retry_by_itself() -> None:
    """One attempt per call: watcher.retry is the one place that decides."""
    backend = S3Backend("127.0.0.1", "bucket", key_id="KEY", secret=SECRET, tls=False)
    client = backend._make_client()
    try:
        assert client.meta.config.retries["total_max_attempts"] == 1
        assert client.meta.config.s3["addressing_style"] == "path"
    finally:
        client.close()
