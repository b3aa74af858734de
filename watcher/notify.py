"""Run reports by mail: a five-second summary in the body, the run's log attached.

Sending never fails a backup: a mail server that is down or refuses is retried a few times,
then logged. `MAIL_ON=failure` mails failed runs (and runs that could not read some files),
plus the first clean success after one, so the owner learns that it recovered.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from watcher.config import Settings
from watcher.errors import NotifyError, PermanentError, TransientError, UnexpectedError
from watcher.logs import log_traceback, redact
from watcher.private import StateFile
from watcher.snapshot import Summary
from watcher.text import format_size, printable

log = logging.getLogger(__name__)

LOG_CAP = 512 * 1024
LOG_HEAD = 128 * 1024
CONNECT_TIMEOUT = 30
SEND_ATTEMPTS = 3


@dataclass(frozen=True)
class TargetLine:
    """One target's part of a run: its label (never a password) and what happened to it."""

    label: str
    ok: bool
    text: str


@dataclass(frozen=True)
class RunReport:
    """What happened in one run, as the mail tells it."""

    ok: bool
    host: str
    sources: tuple[str, ...]
    target: str
    started: datetime
    finished: datetime
    snapshot_id: str | None = None
    parent_id: str | None = None
    summary: Summary | None = None
    warnings: tuple[str, ...] = ()
    error: str | None = None
    next_step: str | None = None
    log_text: str = field(default="", repr=False)
    targets: tuple[TargetLine, ...] = ()  # one line per target, in their order

    @property
    def clean(self) -> bool:
        return self.ok and not self.warnings


def subject(report: RunReport) -> str:
    word = "Success Backup" if report.ok else "Error Backup"
    extra = " (some files could not be read)" if report.ok and report.warnings else ""
    failed = [line.label for line in report.targets if not line.ok]
    if failed:
        extra = f" ({', '.join(failed)} failed)"
    return f"{word} on {report.host}: {', '.join(report.sources) or report.target}{extra}"


def body(report: RunReport) -> str:
    clock = f"{report.started:%H:%M:%S} to {report.finished:%H:%M:%S} UTC, {report.started:%Y-%m-%d}"
    seconds = (report.finished - report.started).total_seconds()
    lines = []
    if len(report.targets) > 1:
        failed = sum(not line.ok for line in report.targets)
        lines.append(f"Backup FAILED on {report.host} for {failed} of {len(report.targets)} targets."
                     if failed else f"Backup succeeded on {report.host} for every target.")
    elif report.ok and report.snapshot_id:
        lines.append(f"Backup succeeded on {report.host}: snapshot {report.snapshot_id}.")
    elif report.ok:
        lines.append(f"Backup succeeded on {report.host}: nothing changed since snapshot {report.parent_id}.")
    else:
        lines.append(f"Backup FAILED on {report.host}.")
        lines.append(f"Cause: {printable(report.error or '')}")
    if report.next_step:
        lines.append(f"Next: {report.next_step}")
    lines.append("")
    lines.append(f"Sources: {', '.join(report.sources)}")
    if len(report.targets) > 1:
        lines.append("Targets:")
        lines.extend(f"  {printable(line.label)}: {printable(line.text)}" for line in report.targets)
    else:
        lines.append(f"Target:  {report.target}")
    summary = report.summary
    if summary is not None:
        lines.append(f"Files:   {summary.new} new, {summary.changed} changed, {summary.removed} removed, "
                     f"{summary.unchanged} unchanged ({summary.files} in all, {format_size(summary.bytes)})")
        lines.append(f"Data:    {format_size(summary.bytes_read)} read, {format_size(summary.bytes_added)} uploaded")
    lines.append(f"Time:    {seconds:.1f} s ({clock})")
    if report.warnings:
        lines.append("")
        lines.append(f"{len(report.warnings)} files or folders could not be read:")
        lines.extend(f"  {printable(warning)}" for warning in report.warnings[:20])
        if len(report.warnings) > 20:
            lines.append(f"  ... and {len(report.warnings) - 20} more (see the attached log)")
    lines.append("")
    lines.append("The run's log is attached.")
    return "\n".join(lines) + "\n"


def cap_log(text: str, limit: int = LOG_CAP, head: int = LOG_HEAD) -> str:
    """Keep the start and the end of a long log, and say what was cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    tail = limit - head
    cut = len(data) - head - tail
    marker = f"\n[... {cut} bytes of this log cut here; the whole log is in the state folder ...]\n"
    return data[:head].decode(errors="ignore") + marker + data[-tail:].decode(errors="ignore")


def message_domain(host: str) -> str:
    """The Message-ID's domain: a header takes only ASCII, so a host name such as 'nöd' goes in as
    IDNA ('xn--nd-fka'); what IDNA cannot take is reduced to letters, digits, dots and dashes.
    The subject and body keep the real name."""
    try:
        domain = host.encode("idna").decode("ascii")
    except UnicodeError:
        domain = host.encode("punycode").decode("ascii")
    return re.sub(r"[^A-Za-z0-9.-]+", "-", domain).strip(".-") or "watcher.invalid"


def build_message(report: RunReport, sender: str, recipients: tuple[str, ...], secrets: list[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = redact(subject(report), secrets)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(report.finished.astimezone(UTC))
    message["Message-ID"] = make_msgid(domain=message_domain(report.host))
    message.set_content(redact(body(report), secrets))
    name = f"watcher-{report.started.astimezone(UTC):%Y%m%dT%H%M%SZ}.log"
    message.add_attachment(redact(cap_log(report.log_text), secrets), subtype="plain", charset="utf-8",
                           filename=name)
    return message


def should_send(mail_on: str, clean: bool, previous_clean: bool | None) -> bool:
    if mail_on == "always":
        return True
    if mail_on == "never":
        return False
    return not clean or previous_clean is False


class MailState:
    """Remembers whether the last reported run was clean, for `MAIL_ON=failure` recoveries."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "mail.json"
        self.file = StateFile(self.path, "mail state")

    def previous_clean(self) -> bool | None:
        try:
            return bool(json.loads(self.path.read_text())["clean"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record(self, clean: bool) -> None:
        self.file.write(json.dumps({"clean": clean}).encode())


class SmtpTemporaryError(NotifyError, TransientError):
    pass


class SmtpPermanentError(NotifyError, PermanentError):
    pass


def translate(error: Exception, settings: Settings) -> NotifyError:
    """The one table from smtplib, ssl and socket errors to ours; specific types first."""
    where = f"mail server {settings.smtp_host}:{settings.smtp_port}"
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return SmtpPermanentError(f"{where} refused the login of {settings.smtp_user} (SMTP_USER / SMTP_PASSWORD)")
    if isinstance(error, ssl.SSLCertVerificationError):
        return SmtpPermanentError(f"{where}: certificate not trusted ({error.verify_message}); see SMTP_TLS_CA_FILE")
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return SmtpPermanentError(f"{where}: {error} (see SMTP_SECURITY)")
    if isinstance(error, (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused)):
        return SmtpPermanentError(f"{where} refused the sender or recipients: {error}")
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error.decode(errors="replace") if isinstance(error.smtp_error, bytes) else error.smtp_error
        kind = SmtpTemporaryError if 400 <= error.smtp_code < 500 else SmtpPermanentError
        return kind(f"{where} answered {error.smtp_code} {text}")
    if isinstance(error, socket.gaierror):
        return SmtpPermanentError(f"{where}: unknown host name")
    if isinstance(error, ssl.SSLError):
        return SmtpPermanentError(f"{where}: TLS failed ({error.reason or error}); check SMTP_SECURITY and SMTP_PORT")
    if isinstance(error, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, ConnectionError,
                          TimeoutError, socket.timeout)):
        return SmtpTemporaryError(f"{where} is unreachable ({error.__class__.__name__}: {error})")
    if isinstance(error, OSError):
        return SmtpTemporaryError(f"{where}: {error.strerror or error}")
    if isinstance(error, UnicodeError):  # its message quotes the text, which may be a secret
        return SmtpPermanentError(f"{where}: a value could not be encoded for the server ({type(error).__name__})")
    return NotifyError(f"{where}: {error.__class__.__name__}: {error}")


def _tls_context(settings: Settings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(settings.smtp_tls_ca_file) if settings.smtp_tls_ca_file else None)


class _Utf8(str):
    """An AUTH answer: smtplib encodes each with ASCII, which fails on a non-ASCII user name or
    password (and its error message quotes the character); servers expect UTF-8 (RFC 4616, 6531)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return str.encode(self, "utf-8", errors)


class _Smtp(smtplib.SMTP):
    """smtplib's client, logging in with UTF-8."""

    def auth(self, mechanism: str, authobject: Callable[..., str | None], *,
             initial_response_ok: bool = True) -> tuple[int, bytes]:
        def answer(challenge: bytes | None = None) -> str | None:
            text = authobject(challenge)
            return None if text is None else _Utf8(text)

        return super().auth(mechanism, answer, initial_response_ok=initial_response_ok)

    def auth_cram_md5(self, challenge: bytes | None = None) -> str | None:
        if challenge is None:
            return None
        return f"{self.user} {hmac.HMAC(self.password.encode(), challenge, 'md5').hexdigest()}"


class _SmtpSsl(_Smtp, smtplib.SMTP_SSL):
    pass


def open_smtp(settings: Settings) -> smtplib.SMTP:
    """Connected, secured and logged in as configured."""
    host, port = settings.smtp_host or "", settings.smtp_port
    smtp: smtplib.SMTP
    if settings.smtp_security == "tls":
        smtp = _SmtpSsl(host, port, timeout=CONNECT_TIMEOUT, context=_tls_context(settings))
    else:
        smtp = _Smtp(host, port, timeout=CONNECT_TIMEOUT)
    try:
        smtp.ehlo()
        if settings.smtp_security == "starttls":
            smtp.starttls(context=_tls_context(settings))
            smtp.ehlo()
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


def _with_server(settings: Settings, action: Callable[[smtplib.SMTP], None], sleep: Callable[[float], None]) -> None:
    def attempt() -> None:
        try:
            smtp = open_smtp(settings)
            try:
                action(smtp)
            finally:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    smtp.close()
        except NotifyError:
            raise
        except Exception as error:
            raise translate(error, settings) from error

    retrying = Retrying(retry=retry_if_exception(lambda e: isinstance(e, TransientError)),
                        stop=stop_after_attempt(SEND_ATTEMPTS), wait=wait_exponential(multiplier=1, max=10),
                        sleep=sleep, reraise=True)
    retrying(attempt)


def send_report(settings: Settings, report: RunReport, sleep: Callable[[float], None] | None = None) -> bool:
    """Mail `report` if MAIL_ON says so; True if sent. Never raises: failures are logged."""
    if not settings.smtp_host:
        return False
    state = MailState(settings.state_dir)
    previous = state.previous_clean()
    state.record(report.clean)
    if not should_send(settings.mail_on, report.clean, previous):
        return False
    sender = settings.mail_from or settings.smtp_user or ""
    try:
        message = build_message(report, sender, settings.mail_to, settings.secrets())
        _with_server(settings, lambda smtp: smtp.send_message(message, sender, list(settings.mail_to)),
                     sleep or time.sleep)
    except NotifyError as error:
        log.error("report mail not sent: %s", error)
        return False
    except Exception as error:  # a report must never end a run, whatever goes wrong in it
        log_traceback(log, error)
        log.error("report mail not sent: %s", UnexpectedError.wrap(error))
        return False
    log.info("report mail sent to %s", ", ".join(settings.mail_to))
    return True


def check_mail_server(settings: Settings) -> str:
    """Connect, secure and log in without sending; raise NotifyError with the cause."""
    _with_server(settings, lambda smtp: smtp.noop(), lambda seconds: None)
    security = {"starttls": "STARTTLS", "tls": "TLS", "none": "no encryption"}[settings.smtp_security]
    login = f", logged in as {settings.smtp_user}" if settings.smtp_user else ""
    return f"{settings.smtp_host}:{settings.smtp_port} ({security}{login})"


def utc_now() -> datetime:
    return datetime.now(UTC)
