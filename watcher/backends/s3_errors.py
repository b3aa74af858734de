"""The S3 backend's one table from botocore, urllib3 and socket errors to ours.

S3 says what went wrong in an error code (`SlowDown`, `AccessDenied`, ...) and an HTTP status;
a HEAD request has no body, so only its status speaks. Codes first, the status after: a 503 is
"slow down" whatever its code, any other 5xx a server trouble worth retrying, 403 a refusal.
botocore's own transport errors come before the generic `OSError`s they also are (its `SSLError`
is a `ConnectionError` too). Kept apart from the backend so that the table reads, and is tested,
as one piece (tests/unit/test_s3_translate.py).
"""

from __future__ import annotations

import ssl

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error

from watcher.errors import (
    AuthError,
    BackendConfigError,
    BackendError,
    ConnectionLostError,
    NotFoundError,
    PermissionDeniedError,
    StorageFullError,
    TemporaryFailureError,
    TrustError,
)

# "Slow down" in the words of AWS, MinIO, Ceph and SeaweedFS.
THROTTLING = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "RequestLimitExceeded",
                        "TooManyRequests", "TooManyRequestsException", "ServiceUnavailable",
                        "XMinioServerNotInitialized"})
# The server had trouble, or the bytes were damaged on the way: the same request may pass.
SERVER_TROUBLE = frozenset({"InternalError", "RequestTimeout", "BadDigest", "OperationAborted",
                            "XAmzContentSHA256Mismatch"})
BAD_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                             "InvalidSecurity", "InvalidClientTokenId", "AccountProblem"})
REFUSED = frozenset({"AccessDenied", "AllAccessDisabled", "InvalidObjectState", "InvalidPayer", "MethodNotAllowed"})
ABSENT = frozenset({"NoSuchKey", "NotFound", "404"})
FULL = frozenset({"QuotaExceeded", "XMinioStorageFull", "EntityTooLarge", "StorageFull"})
WRONG_PLACE = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                         "InvalidBucketName", "InvalidRegion", "301"})


def error_code(error: BaseException) -> str:
    """The S3 error code of a `ClientError` ("" for anything else)."""
    if not isinstance(error, ClientError):
        return ""
    return str(error.response.get("Error", {}).get("Code", ""))


def http_status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def translate(error: BaseException, what: str, *, bucket: str = "", connecting: bool = False) -> BackendError:
    """The one table. `what`: the key or place the operation was about; `bucket`: for messages.

    An error the table does not know stays unmarked (`BackendError`): a gap to fix, never
    retried as if it were transient.
    """
    if isinstance(error, BackendError):
        return error
    if isinstance(error, ClientError):
        return _translate_reply(error, what, bucket)
    if isinstance(error, SSLError):  # before its bases: botocore's ConnectionError and OSError
        return _translate_tls(error, what, connecting=connecting)
    if isinstance(error, (EndpointConnectionError, ConnectionClosedError)):
        return ConnectionLostError(f"{what}: cannot reach the S3 server ({_reason(error)})")
    if isinstance(error, (BotoConnectionError, HTTPClientError, IncompleteReadError)):  # timeouts, resets, cut streams
        return ConnectionLostError(f"{what}: connection lost ({_reason(error)})")
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return BackendConfigError(f"{what}: no S3 credentials: give the access key id in the URL or "
                                  "AWS_ACCESS_KEY_ID, the secret in BACKUP_TARGET_PASSWORD or AWS_SECRET_ACCESS_KEY")
    if isinstance(error, ParamValidationError):
        return BackendConfigError(f"{what}: the S3 request was refused before it was sent ({_reason(error)})")
    if isinstance(error, ssl.SSLCertVerificationError):
        return _translate_tls(error, what, connecting=connecting)
    if isinstance(error, (TimeoutError, ConnectionError, Urllib3Error)):
        return ConnectionLostError(f"{what}: connection lost ({_reason(error)})")
    if isinstance(error, OSError):
        return ConnectionLostError(f"{what}: network error ({_reason(error)})")
    if isinstance(error, BotoCoreError):
        return BackendError(f"{what}: unexpected {type(error).__name__}: {_reason(error)}")
    return BackendError(f"{what}: unexpected {type(error).__name__}: {error}")


def _translate_reply(error: ClientError, what: str, bucket: str) -> BackendError:
    code, status = error_code(error), http_status(error)
    said = f"{code or status}: {error.response.get('Error', {}).get('Message') or 'no message'}"
    said = " ".join(said.split())
    if code in THROTTLING or status in (429, 503):
        return TemporaryFailureError(f"{what}: the S3 server asks to slow down ({said})")
    if code in SERVER_TROUBLE or status >= 500:
        return TemporaryFailureError(f"{what}: the S3 server failed to answer ({said})")
    if code in BAD_CREDENTIALS:
        return AuthError(f"{what}: the S3 server refused the credentials (wrong access key id or secret: {said})")
    if code == "RequestTimeTooSkewed":
        return BackendConfigError(f"{what}: this machine's clock differs too much from the S3 server's ({said})")
    if code == "NoSuchBucket":
        return NotFoundError(f"{what}: the bucket {bucket} does not exist")
    if code in ABSENT or (status == 404 and not code):
        return NotFoundError(f"{what}: not found")
    if code == "InvalidRange" or status == 416:
        return NotFoundError(f"{what}: the range asked for is beyond the end")
    if code in WRONG_PLACE or status == 301:
        return BackendConfigError(f"{what}: the bucket {bucket} cannot be used as configured (a bad name, or in "
                                  f"another region: set AWS_REGION) ({said})")
    if code in FULL:
        return StorageFullError(f"{what}: no space left in the bucket ({said})")
    if code in REFUSED or status == 403:
        return PermissionDeniedError(f"{what}: the S3 server refused access ({said})")
    return BackendError(f"{what}: the S3 server answered {said}")


def _translate_tls(error: Exception, what: str, *, connecting: bool) -> BackendError:
    text = _reason(error)
    lowered = text.lower()
    if "certificate verify failed" in lowered or "hostname mismatch" in lowered:
        return TrustError(f"{what}: the S3 server's certificate cannot be trusted ({text}); give its CA in "
                          "BACKUP_TLS_CA_FILE (or BACKUP_TARGET_N_TLS_CA_FILE)")
    if "wrong version number" in lowered or "record layer failure" in lowered:
        return BackendConfigError(f"{what}: the server does not speak HTTPS on this port (for a plain-HTTP "
                                  f"endpoint on a trusted network, use s3+http://) ({text})")
    if connecting:
        return BackendConfigError(f"{what}: TLS handshake failed ({text})")
    return ConnectionLostError(f"{what}: TLS connection lost ({text})")


def _reason(error: BaseException) -> str:
    """One line of what the library said."""
    return " ".join(str(error).split()) or type(error).__name__
