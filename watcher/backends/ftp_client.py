"""`ftplib` clients with what a careful FTP/FTPS client needs; used by `watcher.backends.ftp`.

- Passive mode tries `EPSV` first (one port number, no address to trust, works over IPv6 and
  NAT) and falls back to `PASV` for good on a server that does not know it; the address in a
  `PASV` reply is never trusted (ftplib's default): the control connection's peer is used.
- FTPS: `ftplib.FTP_TLS` opens each data connection as a new TLS session. vsftpd and ProFTPD
  refuse that by default (`require_ssl_reuse=YES`), since a data connection that does not
  resume the control connection's session could come from anyone. `ntransfercmd`
  here resumes it (TLS 1.2 session ids and TLS 1.3 tickets both work with vsftpd 3.0.3 and
  OpenSSL 3), and reads the server's explanation when the data handshake is refused.
- Data connections end with a TLS close_notify both ways (`finish_data`), so a server can tell
  a complete upload from a truncated one; `abort_data` ends a download early without waiting.
- The protocol's small steps (SIZE, CWD as a folder test, MKD -p, RNFR/RNTO, listings) live on
  the client, with what it learnt about the server (EPSV, MLSD), so the backend reads as steps.
TCP_NODELAY on every socket: without it, the small close_notify record after a small upload
waits for a delayed ACK (40 ms per object on Linux).
"""

from __future__ import annotations

import contextlib
import ftplib
import posixpath
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from watcher.backends.base import IO_CHUNK, CallerStreamError
from watcher.backends.ftp_listing import Entry, parse_list, parse_mlsd
from watcher.errors import BackendConfigError

NOT_IMPLEMENTED = ("500", "502", "504")
_REPLY_WAIT = 5.0  # seconds to wait for the reply that explains a failed data connection
_ABORTED = ("426", "450", "451")  # replies to a download that we closed early on purpose


class Cut(Exception):
    """A download failed after `received` bytes in all (counting a REST offset): resumable."""

    def __init__(self, received: int, error: BaseException) -> None:
        super().__init__(error)
        self.received = received
        self.error = error


class RenameRefused(Exception):
    """RNFR/RNTO refused after a successful upload: the server does not allow renames."""


class TlsRefused(Exception):
    """The server answered AUTH TLS with a refusal: it offers no explicit TLS."""


def line(command: str, path: str) -> str:
    """A command with a path: the one way a path reaches the server."""
    if any(c in path for c in "\r\n\0"):
        raise BackendConfigError(f"refused to send a path with a line break or NUL: {path!r}")
    return f"{command} {path}"


def first_line(reply: object) -> str:
    """A server reply as one printable line (replies can span lines)."""
    text = str(reply).strip()
    text = text.splitlines()[0] if text else ""
    return "".join(c if c.isprintable() else " " for c in text)


def code_of(error: BaseException) -> str:
    return first_line(error)[:3]


def no_delay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not a TCP socket, or already closed
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ClientMixin(ftplib.FTP):
    """Protocol steps shared by the plain and TLS clients. Paths are absolute."""

    epsv = True  # until the server says it does not know EPSV
    mlsd = False  # set from FEAT after login

    def connect(self, *args: Any, **kwargs: Any) -> str:
        welcome = super().connect(*args, **kwargs)
        no_delay(self.sock)
        return welcome

    def makepasv(self) -> tuple[str, int]:
        if self.epsv:
            try:
                return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
            except ftplib.error_perm as error:
                if code_of(error) not in (*NOT_IMPLEMENTED, "501"):
                    raise
                self.epsv = False
        _untrusted, port = ftplib.parse227(self.sendcmd("PASV"))
        return self.sock.getpeername()[0], port

    def learn_features(self) -> None:
        try:
            features = self.sendcmd("FEAT").splitlines()[1:]
        except ftplib.error_perm:
            return
        self.mlsd = any(feature.strip().upper().startswith("MLST") for feature in features)

    def raise_reply(self, error: BaseException) -> None:
        """After a data connection failed, the server's reply says why (522: TLS session not
        resumed, 451: its disk failed, 552: quota): raise it rather than a bare socket error.
        Returns when no reply comes in time or the reply is not an error."""
        control = self.sock
        timeout = control.gettimeout()
        try:
            control.settimeout(min(timeout or _REPLY_WAIT, _REPLY_WAIT))
            self.getresp()
        except ftplib.Error as reply:
            raise reply from error
        except Exception:  # no reply in time, or a dead connection: the original error says enough
            return
        finally:
            with contextlib.suppress(OSError):
                control.settimeout(timeout)

    def any_reply(self) -> str:
        """The next reply, whatever its code (`getresp` raises on 4xx and 5xx)."""
        try:
            return self.getresp()
        except (ftplib.error_temp, ftplib.error_perm) as error:
            return first_line(error)

    def size(self, path: str) -> int | None:
        """The size of the file at `path`; None when there is no file there (550)."""
        try:
            reply = self.sendcmd(line("SIZE", path))
        except ftplib.error_perm as error:
            if code_of(error) == "550":
                return None
            if code_of(error) not in NOT_IMPLEMENTED:
                raise
            folder, name = posixpath.split(path)  # a server without SIZE: look in the listing
            return next((e.size for e in self.entries(folder) if e.name == name and e.kind == "file"), None)
        return int(reply[3:].strip().split()[0])

    def modified(self, path: str) -> float | None:
        """When the file at `path` was last written (MDTM, UTC); None when the server cannot say."""
        try:
            reply = self.sendcmd(line("MDTM", path))
        except ftplib.error_perm as error:
            if code_of(error) == "550" or code_of(error) in NOT_IMPLEMENTED:
                return None
            raise
        try:
            return datetime.strptime(reply[3:].strip()[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp()
        except ValueError:
            return None  # an answer in no known form: the age stays unknown

    def is_folder(self, path: str) -> bool:
        try:
            self.sendcmd(line("CWD", path))
        except ftplib.error_perm:
            return False
        return True

    def makedirs(self, folder: str) -> None:
        """mkdir -p: the folder itself first, since its parents usually exist."""
        try:
            self.sendcmd(line("MKD", folder))
            return
        except ftplib.error_perm as error:
            failure = error
        if self.is_folder(folder):
            return  # it exists (FTP says 550 for that too), maybe made by a concurrent writer
        parent = posixpath.dirname(folder)
        if parent == folder:
            raise failure
        self.makedirs(parent)
        try:
            self.sendcmd(line("MKD", folder))
        except ftplib.error_perm:
            if self.is_folder(folder):
                return
            if self.size(folder) is not None:
                raise BackendConfigError(f"{folder}: a file is in the way of a folder") from None
            raise

    def rename(self, source: str, target: str) -> str:
        reply = self.sendcmd(line("RNFR", source))
        if not reply.startswith("3"):
            raise ftplib.error_reply(reply)
        return self.voidcmd(line("RNTO", target))

    def replace(self, source: str, target: str) -> None:
        """Rename onto `target`, replacing it; RenameRefused when the server will not rename."""
        try:
            self.rename(source, target)
            return
        except ftplib.error_perm as error:
            refusal = error
        if self.size(target) is not None:  # some servers will not rename onto an existing name
            with contextlib.suppress(ftplib.error_perm):
                self.voidcmd(line("DELE", target))
                self.rename(source, target)
                return
        raise RenameRefused(first_line(refusal)) from refusal

    # -- transfers ---------------------------------------------------------------------------

    def store(self, path: str, read: Callable[[], bytes]) -> None:
        """STOR what `read` gives until b"", creating the folder if needed. A `CallerStreamError` from
        `read` ends the upload (the server keeps the part it got) and is raised once the server
        has answered (or the session is closed, if it does not answer)."""
        try:
            conn, _size = self.ntransfercmd(line("STOR", path))
        except ftplib.error_perm as error:
            if code_of(error) not in ("550", "553"):
                raise
            self.makedirs(posixpath.dirname(path))  # vsftpd: 553 "Could not create file" without a folder
            conn, _size = self.ntransfercmd(line("STOR", path))
        try:
            while chunk := read():
                conn.sendall(chunk)
        except CallerStreamError:
            abort_data(conn)
            try:
                self.any_reply()  # 226 or 426
            except Exception:
                self.close()
            raise
        except Exception as error:
            conn.close()
            self.raise_reply(error)
            raise
        except BaseException:
            conn.close()
            raise
        try:
            finish_data(conn)
        except Exception as error:
            self.raise_reply(error)
            raise
        self.voidresp()

    def retrieve(self, path: str, write: Callable[[bytes], object], offset: int = 0) -> None:
        """RETR from `offset` into `write`; raises `Cut` once bytes have arrived."""
        conn, size = self.ntransfercmd(line("RETR", path), rest=offset or None)
        received = offset
        try:
            while data := conn.recv(IO_CHUNK):
                write(data)
                received += len(data)
            finish_data(conn)
            self.voidresp()
        except CallerStreamError:
            abort_data(conn)
            self.close()  # the reply stream is out of step
            raise
        except Exception as error:
            conn.close()
            raise Cut(received, error) from error
        # Plain FTP cannot tell a cut from an end; the 150 reply's size can (the whole object's,
        # or what is left after REST, depending on the server).
        if size is not None and received not in (size, size + offset):
            raise Cut(received, EOFError(f"received {received} of {size} bytes"))

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """REST, RETR, exactly `length` bytes (fewer at the end), then close the data connection."""
        conn, size = self.ntransfercmd(line("RETR", path), rest=offset or None)
        data = bytearray(length)
        view = memoryview(data)
        got = 0
        try:
            while got < length and (count := conn.recv_into(view[got:], min(length - got, IO_CHUNK))):
                got += count
            # More to come? The 150 reply's size says so at once (vsftpd), else one more byte does.
            more = got == length and ((size is not None and offset + length < size) or conn.recv(1) != b"")
        except BaseException:
            conn.close()
            raise
        if more:
            abort_data(conn)  # the server is still sending the rest of the object
            reply = self.any_reply()
            if not reply.startswith(("2", *_ABORTED)):
                raise ftplib.error_reply(reply)
        else:
            finish_data(conn)
            self.voidresp()
        return bytes(view[:got])

    def entries(self, folder: str) -> list[Entry]:
        """One folder's entries (MLSD, else LIST); a folder that is not there has none."""
        if self.mlsd:
            try:
                return list(parse_mlsd(self.read_listing(line("MLSD", folder))))
            except ftplib.error_perm as error:
                if code_of(error) == "550":
                    return []
                if code_of(error) not in NOT_IMPLEMENTED:
                    raise
                self.mlsd = False  # FEAT promised more than the server does
        try:
            return list(parse_list(self.read_listing(line("LIST", folder))))
        except ftplib.error_perm as error:
            if code_of(error) == "550":
                return []
            raise

    def read_listing(self, command: str) -> str:
        conn, _size = self.ntransfercmd(command)
        chunks = []
        try:
            while chunk := conn.recv(IO_CHUNK):
                chunks.append(chunk)
        except BaseException:
            conn.close()
            raise
        finish_data(conn)
        self.voidresp()
        return b"".join(chunks).decode(self.encoding, errors="replace")


class FtpClient(ClientMixin):
    """Plain FTP."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        conn, size = super().ntransfercmd(cmd, rest)
        no_delay(conn)
        return conn, size


class FtpsClient(ClientMixin, ftplib.FTP_TLS):
    """Explicit FTPS whose data connections resume the control connection's TLS session."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)  # the TCP connection and the 150 reply
        no_delay(conn)
        if not self._prot_p:  # type: ignore[attr-defined]
            return conn, size
        try:
            wrapped = self.context.wrap_socket(conn, server_hostname=self.host, session=self.data_session())
        except (OSError, ValueError) as error:
            conn.close()
            self.raise_reply(error)
            raise
        return wrapped, size

    def data_session(self) -> ssl.SSLSession | None:
        """The session every data connection resumes: the control connection's."""
        control = self.sock
        assert isinstance(control, ssl.SSLSocket)
        return control.session


def open_session(
    host: str, port: int, user: str, password: str, context: ssl.SSLContext | None, timeout: float
) -> ClientMixin:
    """Connect, AUTH TLS (with a `context`), log in, PBSZ 0 and PROT P, binary mode, FEAT:
    a session ready for transfers."""
    ftp = FtpsClient(context=context, timeout=timeout) if context else FtpClient(timeout=timeout)
    try:
        ftp.connect(host, port, timeout=timeout)
        if isinstance(ftp, FtpsClient):
            try:
                ftp.auth()
            except ftplib.error_perm as error:
                raise TlsRefused(first_line(error)) from error
        ftp.login(user, password)
        if isinstance(ftp, FtpsClient):
            ftp.prot_p()
        ftp.voidcmd("TYPE I")
        ftp.learn_features()
    except BaseException:
        with contextlib.suppress(Exception):
            ftp.close()
        raise
    return ftp


def tls_context(ca_file: str | None, verify: bool) -> ssl.SSLContext:
    """The system's defaults (TLS 1.2+), with `ca_file` as the only trust anchors when given."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def finish_data(conn: socket.socket) -> None:
    """End a complete transfer: TLS close_notify both ways (an upload is then known whole)."""
    try:
        if isinstance(conn, ssl.SSLSocket):
            conn.unwrap()
    finally:
        conn.close()


def abort_data(conn: socket.socket) -> None:
    """End a transfer early and at once: send close_notify without waiting for the server's
    (it is still sending), then close. The server answers 426 on the control connection."""
    if isinstance(conn, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):  # SSLWantReadError, data after close_notify
            conn.settimeout(0.0)
            conn.unwrap()
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()
