"""An S3-compatible object store (AWS, MinIO, SeaweedFS, Ceph, ...), through boto3.

A `PUT` replaces an object whole or not at all, so no temporary names are needed: a killed
upload leaves nothing under its key. Each upload carries its MD5 (`Content-MD5`), which every
S3 server checks, instead of the newer CRC trailers that several compatible servers refuse;
reads are checked by the repository's own hashes.

boto3 is told to try each request once (`total_max_attempts: 1`; its `max_attempts: 1` would
still retry once): `watcher.retry` is the one place that decides, with what
`s3_errors.translate` says of each failure. Addressing is path-style
(`https://host/bucket/key`), which SeaweedFS, MinIO and AWS all accept, and needs no DNS name
per bucket. The bucket is created by the first upload that finds it missing (a read of a missing
bucket finds nothing, so `doctor` and `snapshots` create nothing). Certificates are checked
against the system's store (not certifi's copy) or the CA file given.

Credentials go to botocore directly: no profile, no `~/.aws` credentials file is consulted.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from watcher.backends.base import (
    DEFAULT_LIMIT,
    IO_CHUNK,
    Backend,
    CallerStreamError,
    ObjectInfo,
    TemporaryInfo,
    is_key,
    is_temp_name,
    limited,
    read_source,
    too_large,
    validate_key,
    validate_prefix,
    validate_temp_name,
    write_sink,
)
from watcher.backends.s3_errors import error_code, translate
from watcher.errors import BackendConfigError, BackendError, IntegrityError, NotFoundError, PermissionDeniedError

log = logging.getLogger(__name__)
DEFAULT_REGION = "us-east-1"
DEFAULT_PORTS = {True: 443, False: 80}
# Packs uploaded at once by a backup, each its own request (botocore's pool keeps 10 connections):
# one PUT at a time left the link idle while the next pack was sealed (docs/BENCHMARKS.md, "S3").
UPLOADS_AT_ONCE = 3
STREAM_FROM = 1024 * 1024  # an upload this large is streamed from its source, not copied into one buffer


def system_ca_file() -> str | bool:
    """The system's CA bundle (what `update-ca-certificates` maintains), or True: botocore's own."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    return True


class _Body:
    """The bytes of `source` from `start`, as botocore reads a request body: sized (`len`), read in
    pieces, and sought back to its start once its SHA-256 is taken for the signature."""

    def __init__(self, source: BinaryIO, start: int, size: int) -> None:
        self.source = source
        self.start = start
        self.size = size
        source.seek(start)

    def __len__(self) -> int:
        return self.size - self.tell()

    def read(self, size: int = -1) -> bytes:
        left = self.size - self.tell()
        return self.source.read(left if size is None or size < 0 else min(size, left))

    def tell(self) -> int:
        return self.source.tell() - self.start

    def seek(self, position: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.tell(), 2: self.size}[whence]
        self.source.seek(self.start + base + position)
        return self.tell()


class S3Backend(Backend):
    scheme = "s3"
    concurrent_puts = UPLOADS_AT_ONCE

    def __init__(
        self,
        host: str,
        bucket: str,
        prefix: str = "",
        *,
        port: int | None = None,
        key_id: str = "",
        secret: str | None = None,
        tls: bool = True,
        ca_file: str | Path | None = None,
        region: str = DEFAULT_REGION,
        timeout: float = 30.0,
        io_timeout: float = 120.0,
    ) -> None:
        if not host:
            raise BackendConfigError("s3 target: no host name")
        if not bucket:
            raise BackendConfigError("s3 target: no bucket (s3://KEY_ID@host/bucket[/prefix])")
        if not key_id or not secret:
            raise BackendConfigError("s3 target: an access key id and a secret are both needed")
        self.host = host
        self.port = port or DEFAULT_PORTS[tls]
        self.bucket = bucket
        self.prefix = "/".join(part for part in prefix.split("/") if part)
        self.key_id = key_id
        self._secret = secret
        self.tls = tls
        self.scheme = "s3" if tls else "s3+http"
        self.ca_file = str(ca_file) if ca_file else None
        self.region = region or DEFAULT_REGION
        self.timeout = timeout
        self.io_timeout = io_timeout
        self._client: Any = None
        self._lock = threading.Lock()
        self._warned_plain = False
        self._bucket_missing = False  # the last listing found no bucket: the first upload creates it

    def __repr__(self) -> str:
        return f"S3Backend({self.describe()!r})"

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if self.port == DEFAULT_PORTS[self.tls] else f":{self.port}"
        path = f"/{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        return f"{self.scheme}://{self.key_id}@{host}{port}{path}"

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    # -- connection ------------------------------------------------------------------------

    def open(self) -> None:
        """Make the client and prove the credentials with a one-key listing (a missing bucket is
        fine: the first upload creates it)."""
        with self._lock:
            if self._client is not None:
                return
            try:
                self._client = self._make_client()
            except Exception as error:
                self._fail(error, self.describe(), connecting=True)
        if not self.tls and not self._warned_plain:
            self._warned_plain = True
            log.warning("%s: plain HTTP: transfers are not encrypted (requests are signed, the secret is never sent)",
                        self.describe())
        try:
            self._prove()
        except BaseException:
            self.close()
            raise

    def _prove(self) -> None:
        """A one-key listing: the server answers and takes the credentials (a missing bucket is fine)."""
        try:
            self._call("list_objects_v2", Bucket=self.bucket, Prefix=self._full(""), MaxKeys=1)
        except Exception as error:
            if error_code(error) == "NoSuchBucket":
                self._bucket_missing = True
                return
            self._fail(error, self.describe(), connecting=True)
        self._bucket_missing = False

    def _make_client(self) -> Any:
        import boto3
        import botocore.session
        from botocore.config import Config

        config = Config(
            region_name=self.region,
            retries={"total_max_attempts": 1, "mode": "standard"},  # one try, no retry: watcher.retry decides
            s3={"addressing_style": "path"},
            connect_timeout=self.timeout,
            read_timeout=self.io_timeout,
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_appid="watcher",
        )
        # No profile and no ~/.aws file: what the variables say is all that is used (AWS_PROFILE naming
        # a profile this machine lacks, or a config file botocore cannot parse, must not break a backup).
        core = botocore.session.Session(session_vars={
            "profile": (None, None, None, None),
            "config_file": (None, None, os.devnull, None),
            "credentials_file": (None, None, os.devnull, None),
        })
        session = boto3.session.Session(aws_access_key_id=self.key_id, aws_secret_access_key=self._secret,
                                        region_name=self.region, botocore_session=core)
        verify: str | bool = (self.ca_file or system_ca_file()) if self.tls else False
        return session.client("s3", endpoint_url=self.endpoint, config=config, verify=verify)

    def reconnect(self) -> None:
        """Ask the server again, as connecting does, but keep the client: botocore's pool already
        drops a connection that failed, and the upload threads share the client, so closing it would
        fail their requests as well. A server that does not answer fails here as a connection does."""
        if self._client is None:
            self.open()
        else:
            self._prove()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # close never raises; the connections are dropped anyway
                return

    def _call(self, operation: str, **arguments: Any) -> Any:
        """One S3 request, connecting first if needed (the contract's "open on first use")."""
        client = self._client
        if client is None:
            self.open()
            client = self._client
            if client is None:  # closed by another thread meanwhile
                raise BackendError(f"{self.describe()}: the connection was closed")
        return getattr(client, operation)(**arguments)

    def _fail(self, error: BaseException, what: str, *, connecting: bool = False) -> NoReturn:
        """Translate and raise, the secret scrubbed from the text should a library ever quote it."""
        translated = translate(error, what, bucket=self.bucket, connecting=connecting)
        if self._secret and self._secret in str(translated):
            translated = type(translated)(str(translated).replace(self._secret, "***"))
        raise translated from error

    def _full(self, key: str) -> str:
        """The object name in the bucket: `prefix/key` (or the prefix's folder itself, for "")."""
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else f"{self.prefix}/"

    # -- objects ---------------------------------------------------------------------------

    def put(self, key: str, source: BinaryIO) -> None:
        name = self._full(validate_key(key))
        md5 = hashlib.md5(usedforsecurity=False)
        try:
            if not source.seekable():  # a pipe: kept whole, as it cannot be read twice
                source = io.BytesIO(b"".join(iter(lambda: read_source(source), b"")))
            start = source.tell()
            for piece in iter(lambda: read_source(source), b""):
                md5.update(piece)
        except CallerStreamError as wrapped:
            raise wrapped.error from None
        size = source.tell() - start
        digest = base64.b64encode(md5.digest()).decode()

        def body() -> _Body | bytes:
            """The object from its start: a pack is read again as it is sent (no copy of it is made);
            a small object goes as bytes, which botocore sends without `Expect: 100-continue`."""
            if size >= STREAM_FROM:
                return _Body(source, start, size)
            source.seek(start)
            return b"".join(iter(lambda: read_source(source), b""))

        try:
            try:
                self._call("put_object", Bucket=self.bucket, Key=name, Body=body(), ContentMD5=digest)
            except Exception as error:
                # Some servers (SeaweedFS) refuse a key that may not create buckets with AccessDenied
                # rather than NoSuchBucket: creating it then says what is wrong.
                missing = error_code(error) == "NoSuchBucket" or (self._bucket_missing
                                                                  and error_code(error) == "AccessDenied")
                if not missing:
                    raise
                self._create_bucket()
                self._bucket_missing = False
                self._call("put_object", Bucket=self.bucket, Key=name, Body=body(), ContentMD5=digest)
        except CallerStreamError as wrapped:
            raise wrapped.error from None
        except BackendError:
            raise
        except Exception as error:
            self._fail(error, key)

    def _create_bucket(self) -> None:
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != DEFAULT_REGION:  # AWS wants the region said, except for its first one
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._call("create_bucket", **arguments)
        except Exception as error:
            code = error_code(error)
            if code == "BucketAlreadyOwnedByYou":  # made meanwhile by another run of ours
                return
            if code == "BucketAlreadyExists":
                raise PermissionDeniedError(f"{self.describe()}: the bucket name {self.bucket} is taken by another "
                                            "account; choose another") from error
            translated = translate(error, self.describe(), bucket=self.bucket)
            if isinstance(translated, PermissionDeniedError):
                raise PermissionDeniedError(f"{self.describe()}: the bucket {self.bucket} does not exist and this "
                                            "access key may not create it: create it, or allow CreateBucket") from error
            self._fail(error, self.describe())
        log.info("%s: created the bucket %s", self.describe(), self.bucket)

    def get(self, key: str, sink: BinaryIO, limit: int = DEFAULT_LIMIT) -> None:
        name = self._full(validate_key(key))
        try:
            answer = self._call("get_object", Bucket=self.bucket, Key=name)
            body = answer["Body"]
            try:
                if int(answer.get("ContentLength") or 0) > limit:
                    raise too_large(key, limit)
                bounded = limited(sink, key, limit)
                while data := body.read(IO_CHUNK):
                    write_sink(bounded, data)
            finally:
                body.close()
        except CallerStreamError as wrapped:
            raise wrapped.error from None
        except (BackendError, IntegrityError):
            raise
        except Exception as error:
            self._fail(error, key)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        name = self._full(validate_key(key))
        if length <= 0:  # an empty range cannot be asked for in HTTP; the object must still exist
            if self.stat(key).size < offset:
                raise NotFoundError(f"{key}: range {offset}+{length} beyond the end")
            return b""
        try:
            answer = self._call("get_object", Bucket=self.bucket, Key=name,
                                Range=f"bytes={offset}-{offset + length - 1}")
            body = answer["Body"]
            try:
                data = body.read(length + 1)
            finally:
                body.close()
        except BackendError:
            raise
        except Exception as error:
            self._fail(error, key)
        if len(data) != length:
            raise NotFoundError(f"{key}: range {offset}+{length} beyond the end")
        return data

    def _request(self, what: str, operation: str, **arguments: Any) -> Any:
        """One request about an object of the bucket, its failure translated."""
        try:
            return self._call(operation, Bucket=self.bucket, **arguments)
        except BackendError:
            raise
        except Exception as error:
            self._fail(error, what)

    def stat(self, key: str) -> ObjectInfo:
        answer = self._request(key, "head_object", Key=self._full(validate_key(key)))
        return ObjectInfo(key, int(answer["ContentLength"]))

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Every object under the folder `prefix` (relative; "" for all), page by page (ListObjectsV2
        gives at most 1000 names an answer). A missing bucket holds nothing."""
        folder = self._full(f"{prefix}/" if prefix else "")
        if self._client is None:
            self.open()
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder)
            for page in pages:
                yield from page.get("Contents", ())
        except BackendError:
            raise
        except Exception as error:
            if error_code(error) == "NoSuchBucket":
                return
            self._fail(error, prefix or self.describe())

    def _relative(self, name: str) -> str:
        return name[len(self.prefix) + 1:] if self.prefix else name

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        found = [ObjectInfo(self._relative(item["Key"]), int(item["Size"])) for item in self._objects(prefix)]
        yield from sorted((info for info in found if is_key(info.key)), key=lambda info: info.key)

    def delete(self, key: str) -> None:
        self._remove(key, self._full(validate_key(key)))

    def _remove(self, what: str, name: str) -> None:
        """S3 deletes what is absent without a word; the contract wants NotFoundError, hence a HEAD first."""
        self._request(what, "head_object", Key=name)
        self._request(what, "delete_object", Key=name)

    def list_temporary(self) -> Iterator[TemporaryInfo]:
        """watcher never writes temporary names on S3; names of that form (another tool's copy of a
        repository, or one moved here) are still reported, so that `forget` can clean them."""
        found = []
        for item in self._objects(""):
            name = self._relative(item["Key"])
            if is_temp_name(name):
                modified = item.get("LastModified")
                found.append(TemporaryInfo(name, modified.timestamp() if modified is not None else None))
        yield from sorted(found, key=lambda info: info.name)

    def delete_temporary(self, name: str) -> None:
        self._remove(name, self._full(validate_temp_name(name)))
