"""The scheme registry: a `Target` and its settings -> a concrete backend."""

from __future__ import annotations

from watcher.backends.base import Backend
from watcher.config import Settings, Target
from watcher.errors import BackendConfigError


def create_backend(settings: Settings, target: Target | None = None) -> Backend:
    """Build the backend for `target` (the first one if None); it connects on `open()`, not here."""
    target = target or settings.target
    if target is None:
        raise BackendConfigError("no target configured")
    if target.scheme == "file":
        from watcher.backends.local import LocalBackend

        return LocalBackend(target.path)
    if target.scheme == "sftp":
        from watcher.backends.sftp import SftpBackend

        return SftpBackend(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            key_file=target.ssh_key,
            known_hosts=settings.ssh_known_hosts,
            host_key_policy=settings.ssh_host_key,
            root=target.path,
        )
    if target.scheme in ("ftp", "ftps"):
        from watcher.backends.ftp import FtpBackend

        return FtpBackend(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            root=target.path,
            tls=target.scheme == "ftps",
            tls_ca_file=str(target.tls_ca_file) if target.tls_ca_file else None,
            tls_verify=settings.tls_verify,
        )
    if target.scheme in ("s3", "s3+http"):
        from watcher.backends.s3 import S3Backend

        bucket, _, prefix = target.path.lstrip("/").partition("/")
        return S3Backend(
            host=target.host,
            bucket=bucket,
            prefix=prefix,
            port=target.port,
            key_id=target.user,
            secret=target.password,
            tls=target.scheme == "s3",
            ca_file=target.tls_ca_file,
            region=settings.s3_region,
        )
    raise BackendConfigError(f"unknown target scheme {target.scheme}://")
