"""Environment, `.env` and `*_FILE` secrets -> one frozen, validated `Settings`.

Every variable of SPEC.md is parsed here, including those used by later features, and every
problem is collected before raising, so a user fixes a bad configuration in one pass.
Secrets never appear in `repr()`.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pathspec
from dotenv import dotenv_values

from watcher.errors import ConfigError

MAX_TARGETS = 9
# A variable of target N (2 to 9): BACKUP_TARGET_N itself, or one of its own settings.
_TARGET_VARIABLE = re.compile(r"BACKUP_TARGET_(\d+)(_PASSWORD|_PASSWORD_FILE|_SSH_KEY|_TLS_CA_FILE)?")
SCHEMES = {"file": None, "sftp": 22, "ftp": 21, "ftps": 21, "s3": 443, "s3+http": 80}
S3_SCHEMES = ("s3", "s3+http")
# S3's bucket naming rules (3 to 63 lowercase letters, digits, dots and hyphens, a letter or digit at each end).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
KEEP_VARIABLES = {  # Retention field -> variable, spelled out so that each name can be searched for
    "last": "BACKUP_KEEP_LAST",
    "hourly": "BACKUP_KEEP_HOURLY",
    "daily": "BACKUP_KEEP_DAILY",
    "weekly": "BACKUP_KEEP_WEEKLY",
    "monthly": "BACKUP_KEEP_MONTHLY",
    "yearly": "BACKUP_KEEP_YEARLY",
}
MAX_SECONDS = 366 * 24 * 3600  # a year: every duration variable; more overflows waits and dates
MAX_RETRIES = 1000
MAX_KEEP = 1_000_000
_KEY_FILE_MAX = 1024 * 1024  # a private key file is a few KiB; the block is looked for in its first MiB
_PRIVATE_KEY_BLOCK = re.compile(rb"^-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----", re.MULTILINE)


@dataclass(frozen=True)
class Target:
    """A parsed `BACKUP_TARGET` (number 1) or `BACKUP_TARGET_N`; `password` comes from the URL or
    `BACKUP_TARGET[_N]_PASSWORD`; `ssh_key` and `tls_ca_file` are its own or the shared ones."""

    scheme: str
    path: str
    host: str = ""
    port: int = 0
    user: str = ""
    password: str | None = field(default=None, repr=False)
    number: int = 1
    ssh_key: Path | None = None
    tls_ca_file: Path | None = None

    @property
    def variable(self) -> str:
        return target_variable(self.number)

    def label(self) -> str:
        """How reports and errors name it: its number and its URL without any password."""
        return f"target {self.number} ({self.describe()})"

    def describe(self) -> str:
        """The target as a URL without any password."""
        if self.scheme == "file":
            return f"file://{self.path}"
        port = "" if self.port == SCHEMES[self.scheme] else f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{self.user}@{host}{port}{self.path}"


@dataclass(frozen=True)
class Retention:
    last: int | None = None
    hourly: int | None = None
    daily: int | None = None
    weekly: int | None = None
    monthly: int | None = None
    yearly: int | None = None

    def is_set(self) -> bool:
        return any(value is not None for value in vars(self).values())


def target_variable(number: int, setting: str = "") -> str:
    """`BACKUP_TARGET` for the first target, `BACKUP_TARGET_N` for the others; `setting` appends
    one of their own variables' suffixes (`_PASSWORD`, `_SSH_KEY`, ...)."""
    return ("BACKUP_TARGET" if number == 1 else f"BACKUP_TARGET_{number}") + setting


@dataclass(frozen=True)
class Settings:
    targets: tuple[Target, ...] = ()
    sources: tuple[Path, ...] = ()
    exclude: tuple[str, ...] = ()
    ssh_key: Path | None = None
    ssh_known_hosts: Path = field(default_factory=lambda: Path("~/.ssh/known_hosts").expanduser())
    ssh_host_key: str = "strict"
    tls_ca_file: Path | None = None
    tls_verify: bool = True
    debounce_seconds: float = 5.0
    max_delay_seconds: float = 60.0
    rescan_seconds: float = 3600.0
    watch_mode: str = "auto"
    retries: int = 5
    retry_max_seconds: float = 300.0
    retention: Retention = field(default_factory=Retention)
    health_max_age_seconds: float = 7200.0
    host: str = field(default_factory=socket.gethostname)
    state_dir: Path = field(default_factory=lambda: Path("~/.local/state/watcher").expanduser())
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_tls_ca_file: Path | None = None
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    mail_from: str | None = None
    mail_to: tuple[str, ...] = ()
    mail_on: str = "failure"
    repository_password: str | None = field(default=None, repr=False)
    new_repository_password: str | None = field(default=None, repr=False)  # for `key add` and `key passwd`
    encryption: str = "auto"
    compression: str = "auto"
    s3_region: str = "us-east-1"  # AWS_REGION or AWS_DEFAULT_REGION; what AWS signs requests for

    @property
    def target(self) -> Target | None:
        """The first target: the one commands use unless `--target N` says otherwise."""
        return self.targets[0] if self.targets else None

    def secrets(self) -> list[str]:
        """Every secret value in force, for the log and output redaction filters."""
        values = [self.smtp_password, self.repository_password, self.new_repository_password,
                  *(target.password for target in self.targets)]
        return [value for value in values if value]


def read_environment(environ: Mapping[str, str], env_file: str | None, cwd: Path) -> dict[str, str]:
    """The real environment over the `.env` file (or `--env-file`), which it always wins against."""
    merged: dict[str, str] = {}
    name = "--env-file" if env_file else ".env"
    path = Path(env_file) if env_file else cwd / ".env"
    try:
        exists = path.is_file()
        if exists:
            values = dotenv_values(path)
            merged.update({key: value for key, value in values.items() if value is not None})
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError([f"{name}: cannot read {path}: {reason}"]) from error
    if env_file and not exists:
        raise ConfigError([f"--env-file: {env_file} is not a readable file"])
    merged.update(environ)
    return merged


class _Parser:
    """Reads variables one by one, collecting problems instead of raising at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def fail(self, name: str, message: str) -> None:
        self.problems.append(f"{name}: {message}")

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def secret(self, name: str) -> str | None:
        file_name = f"{name}_FILE"
        if self.text(name) and self.text(file_name):
            self.fail(name, f"set either {name} or {file_name}, not both")
            return None
        path = self.text(file_name)
        if path is None:
            return self.env.get(name) or None
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as error:
            self.fail(file_name, f"cannot read {path}: {getattr(error, 'strerror', None) or error}")
            return None

    def number(self, name: str, default: float, *, integer: bool = False, minimum: float = 0,
               maximum: float = MAX_SECONDS) -> float:
        """A finite number in [minimum, maximum]: a huge value overflows the clocks and waits it feeds."""
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            self.fail(name, f"{raw!r} is not {kind}")
            return default
        if not minimum <= value <= maximum:  # also false for nan
            self.fail(name, f"{raw!r} must be between {minimum:g} and {maximum:.0f}")
            return default
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() not in choices:
            self.fail(name, f"{raw!r} is not one of {', '.join(choices)}")
            return default
        return raw.lower()

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        if raw.lower() in ("true", "yes", "1", "on"):
            return True
        if raw.lower() in ("false", "no", "0", "off"):
            return False
        self.fail(name, f"{raw!r} is not true or false")
        return default

    def readable_file(self, name: str) -> Path | None:
        raw = self.text(name)
        if raw is None:
            return None
        path = Path(raw).expanduser()
        if not path.is_file() or not os.access(path, os.R_OK):
            self.fail(name, f"{raw} is not a readable file")
            return None
        return path

    def private_key_file(self, name: str) -> Path | None:
        """A readable file that holds a private key in a form paramiko reads (OpenSSH, PKCS#1, PKCS#8,
        SEC1: a `-----BEGIN … PRIVATE KEY-----` block); whether it opens is known when connecting,
        as an encrypted one needs the target's password."""
        path = self.readable_file(name)
        if path is None:
            return None
        try:
            with path.open("rb") as handle:
                head = handle.read(_KEY_FILE_MAX)
        except OSError as error:
            self.fail(name, f"{path}: cannot be read ({error.strerror})")
            return None
        if not _PRIVATE_KEY_BLOCK.search(head):
            self.fail(name, f"{path} holds no private key (no -----BEGIN … PRIVATE KEY----- block)")
            return None
        return path

    def items(self, name: str) -> tuple[str, ...]:
        raw = self.env.get(name, "")
        return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_target(parser: _Parser, name: str) -> Target | None:
    """One target URL; for s3, the access key id may come from AWS_ACCESS_KEY_ID instead."""
    raw = parser.text(name)
    if raw is None:
        return None
    shown = raw.split("://", 1)[0] + "://…" if "@" in raw else raw
    try:
        url = urlsplit(raw)
        url.port, url.hostname, url.username  # noqa: B018 (each may raise ValueError)
    except ValueError as error:
        parser.fail(name, f"malformed URL {shown!r}: {error}")
        return None
    scheme = url.scheme.lower()
    if scheme not in SCHEMES:
        parser.fail(name, f"unknown scheme in {shown!r} (use file://, sftp://, ftp://, ftps://, s3:// or s3+http://)")
        return None
    path = unquote(url.path)
    if url.query or url.fragment:
        parser.fail(name, "a target URL takes no '?' or '#' part")
        return None
    if not path.startswith("/"):
        parser.fail(name, f"{scheme}:// target needs an absolute path ({scheme}://…/abs/path)")
        return None
    if scheme == "file":
        if url.netloc not in ("", "localhost"):
            parser.fail(name, "a file:// target is file:///absolute/path (no host)")
            return None
        return Target(scheme, os.path.normpath(path))
    port = url.port if url.port is not None else SCHEMES[scheme]
    if not 0 < (port or 0) < 65536:
        parser.fail(name, f"invalid port {port} in {scheme}:// target")
        return None
    if not url.hostname:
        parser.fail(name, f"{scheme}:// target needs a host ({scheme}://user@host/path)")
        return None
    user = unquote(url.username) if url.username else None
    if user is None and scheme in S3_SCHEMES:
        user = parser.text("AWS_ACCESS_KEY_ID")
    if not user:
        if scheme in S3_SCHEMES:
            parser.fail(name, f"{scheme}:// target needs an access key id ({scheme}://KEY_ID@host/bucket, "
                              "or AWS_ACCESS_KEY_ID)")
        else:
            parser.fail(name, f"{scheme}:// target needs a user name ({scheme}://user@host/path)")
        return None
    password = unquote(url.password) if url.password else None
    normalized = "/" + "/".join(part for part in path.split("/") if part)
    if any(part in (".", "..") for part in normalized.split("/")):
        parser.fail(name, "the target path may not contain '.' or '..'")
        return None
    if scheme in S3_SCHEMES and not _BUCKET.fullmatch(normalized.split("/")[1]):
        parser.fail(name, f"{scheme}:// target needs a bucket name: {scheme}://KEY_ID@host/bucket[/prefix], the bucket "
                          "3 to 63 lowercase letters, digits, dots or hyphens")
        return None
    return Target(scheme, normalized, url.hostname, port, user, password)


def _numbered_variables(parser: _Parser) -> dict[int, list[str]]:
    """Target number -> the variables set for it (2 and up), each name checked against the known ones."""
    numbered: dict[int, list[str]] = {}
    for name in sorted(parser.env):
        match = _TARGET_VARIABLE.fullmatch(name)
        if match is None or not parser.env[name].strip():
            continue
        number = int(match.group(1))
        if not 2 <= number <= MAX_TARGETS or match.group(1) != str(number):
            parser.fail(name, f"targets are BACKUP_TARGET and BACKUP_TARGET_2 to BACKUP_TARGET_{MAX_TARGETS}")
            continue
        numbered.setdefault(number, []).append(name)
    return numbered


def _parse_targets(parser: _Parser, shared_key: Path | None, shared_ca: Path | None) -> tuple[Target, ...]:
    """BACKUP_TARGET, then BACKUP_TARGET_2 to _9 in order: no gap, no repository twice, no setting
    for a target that is not set, no key or CA file that its scheme would silently ignore."""
    numbered = _numbered_variables(parser)
    targets: list[Target] = []
    for number in range(1, MAX_TARGETS + 1):
        name = target_variable(number)
        if number > 1 and name not in numbered.get(number, []):
            for orphan in numbered.get(number, []):
                parser.fail(orphan, f"set for a target that is not: {name} is not set")
            continue
        password = parser.secret(target_variable(number, "_PASSWORD"))
        own: dict[str, Path | None] = {"_SSH_KEY": None, "_TLS_CA_FILE": None}  # target 1 uses the shared ones
        if number > 1:
            own = {"_SSH_KEY": parser.private_key_file(target_variable(number, "_SSH_KEY")),
                   "_TLS_CA_FILE": parser.readable_file(target_variable(number, "_TLS_CA_FILE"))}
        target = _parse_target(parser, name)
        if target is None:
            continue
        if number > 1 and parser.text(target_variable(number - 1)) is None:
            parser.fail(name, f"set without {target_variable(number - 1)}: number the targets without a gap")
        for setting, schemes in (("_SSH_KEY", ("sftp",)), ("_TLS_CA_FILE", ("ftps", "s3"))):
            if own[setting] is not None and target.scheme not in schemes:
                parser.fail(target_variable(number, setting), f"{name} is a {target.scheme}:// target; this setting "
                                                              f"is for {' and '.join(f'{s}://' for s in schemes)} only")
        if target.scheme in S3_SCHEMES and password is None and target.password is None:
            password = parser.secret("AWS_SECRET_ACCESS_KEY")
            if password is None:
                parser.fail(target_variable(number, "_PASSWORD"), f"required for an {target.scheme}:// target: "
                                                                   "the secret access key (or AWS_SECRET_ACCESS_KEY)")
        same = next((other for other in targets if _repository_place(other) == _repository_place(target)), None)
        if same is not None:
            parser.fail(name, f"the same repository as {same.variable} ({same.describe()}): list each target once")
            continue
        targets.append(replace(target, password=password if password is not None else target.password,
                               number=number, ssh_key=own["_SSH_KEY"] or shared_key,
                               tls_ca_file=own["_TLS_CA_FILE"] or shared_ca))
    return tuple(targets)


def _repository_place(target: Target) -> tuple[str | int, ...]:
    """Where a target's repository lives: a folder by its real path (a symlink names the same one),
    an FTP account's folder whether reached with TLS or not."""
    if target.scheme == "file":
        return ("file", os.path.realpath(target.path))
    if target.scheme in S3_SCHEMES:  # a bucket's folder, whoever's key reaches it
        return ("s3", target.host.lower(), target.path)
    return ("ftp" if target.scheme == "ftps" else target.scheme, target.user, target.host.lower(), target.port,
            target.path)


def _parse_sources(parser: _Parser, required: bool) -> tuple[Path, ...]:
    name = "BACKUP_SOURCES"
    items = parser.items(name)
    if not items:
        if required:
            parser.fail(name, "required: comma-separated absolute folders to back up")
        return ()
    sources: list[Path] = []
    for item in items:
        path = Path(item)
        if not item.isprintable():
            parser.fail(name, f"{item!r} contains a control character (it goes into mail headers)")
        elif not path.is_absolute():
            parser.fail(name, f"{item} is not an absolute path")
        elif os.path.normpath(item) in ("/", "//"):  # a snapshot names each source by its folder's name
            parser.fail(name, "/ cannot be a source: list the folders under it to back up")
        elif required and not path.is_dir():
            parser.fail(name, f"{item} is not an existing folder")
        else:
            sources.append(Path(os.path.normpath(path)))
    for one in sources:
        for other in sources:
            if one != other and one.is_relative_to(other):
                parser.fail(name, f"{one} is inside {other}; list each folder once")
    return tuple(dict.fromkeys(sources))


def _parse_host(parser: _Parser) -> str:
    host = parser.text("BACKUP_HOST") or socket.gethostname()
    if not host.isprintable():
        parser.fail("BACKUP_HOST", f"{host!r} contains a control character (it goes into mail headers)")
    return host


def _parse_exclude(parser: _Parser) -> tuple[str, ...]:
    """Compile each pattern now: a pattern pathspec refuses would otherwise stop every run."""
    patterns = parser.items("BACKUP_EXCLUDE")
    for pattern in patterns:
        try:
            pathspec.GitIgnoreSpec.from_lines([pattern])
        except (ValueError, re.error):  # GitIgnorePatternError is a ValueError
            parser.fail("BACKUP_EXCLUDE", f"{pattern!r} is not a valid gitignore-style pattern")
    return patterns


def _check_state_dir(parser: _Parser, path: Path) -> None:
    """The state folder exists or can be created, is a folder, and takes files (a probe, since
    permissions alone lie to root and about read-only mounts). Nothing is left behind."""
    name = "BACKUP_STATE_DIR"
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is not a folder" if existing == path else f"cannot be created: {existing} is not a folder"
        parser.fail(name, f"{path} {what}")
        return
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".watcher-probe-"):
            pass
    except OSError as error:
        what = "is not writable" if existing == path else f"cannot be created in {existing}"
        parser.fail(name, f"{path} {what}: {error.strerror or error}")


def load_settings(env: Mapping[str, str], *, need_sources: bool = False, need_target: bool = True) -> Settings:
    """Parse and validate every variable; raise ConfigError listing all problems.

    `need_sources` is set by the commands that read the sources (backup, run, doctor); the
    others work with the target alone, so a fresh machine can list and restore.
    """
    parser = _Parser(env)
    ssh_key = parser.private_key_file("BACKUP_SSH_KEY")
    tls_ca_file = parser.readable_file("BACKUP_TLS_CA_FILE")
    targets = _parse_targets(parser, ssh_key, tls_ca_file)
    if parser.text("BACKUP_TARGET") is None and need_target:
        parser.fail("BACKUP_TARGET", "required: file:///path, sftp://user@host/path, ftp://…, ftps://… or s3://…")
    retention = Retention(  # 0 is "not set", as restic reads --keep-* 0: a rule that keeps nothing would forget all
        **{
            field_name: None if parser.text(variable) is None
            else int(parser.number(variable, 0, integer=True, maximum=MAX_KEEP)) or None
            for field_name, variable in KEEP_VARIABLES.items()
        }
    )
    smtp_host = parser.text("SMTP_HOST")
    smtp_user = parser.text("SMTP_USER")
    mail_to = parser.items("MAIL_TO")
    mail_from = parser.text("MAIL_FROM") or (smtp_user if smtp_host else None)
    if smtp_host and not mail_to:
        parser.fail("MAIL_TO", "required when SMTP_HOST is set")
    if smtp_host and not mail_from:
        parser.fail("MAIL_FROM", "required when SMTP_HOST is set and SMTP_USER is not")
    for name, addresses in (("MAIL_TO", mail_to), ("MAIL_FROM", (mail_from,) if mail_from else ())):
        for address in addresses:
            if not _is_mail_address(address):
                source = "SMTP_USER" if name == "MAIL_FROM" and not parser.text("MAIL_FROM") else name
                parser.fail(source, f"{address!r} is not a mail address")
    known_hosts = parser.text("BACKUP_SSH_KNOWN_HOSTS")
    state_dir = parser.text("BACKUP_STATE_DIR")
    settings = Settings(
        targets=targets,
        sources=_parse_sources(parser, need_sources),
        exclude=_parse_exclude(parser),
        ssh_key=ssh_key,
        ssh_known_hosts=Path(known_hosts or "~/.ssh/known_hosts").expanduser(),
        ssh_host_key=parser.choice("BACKUP_SSH_HOST_KEY", "strict", ("strict", "accept-new")),
        tls_ca_file=tls_ca_file,
        tls_verify=parser.boolean("BACKUP_TLS_VERIFY", True),
        debounce_seconds=parser.number("BACKUP_DEBOUNCE_SECONDS", 5.0),
        max_delay_seconds=parser.number("BACKUP_MAX_DELAY_SECONDS", 60.0),
        rescan_seconds=parser.number("BACKUP_RESCAN_SECONDS", 3600.0),
        watch_mode=parser.choice("BACKUP_WATCH_MODE", "auto", ("auto", "events", "poll")),
        retries=int(parser.number("BACKUP_RETRIES", 5, integer=True, minimum=1, maximum=MAX_RETRIES)),
        retry_max_seconds=parser.number("BACKUP_RETRY_MAX_SECONDS", 300.0),
        retention=retention,
        health_max_age_seconds=parser.number("BACKUP_HEALTH_MAX_AGE_SECONDS", 7200.0, minimum=1),
        host=_parse_host(parser),
        state_dir=Path(state_dir).expanduser() if state_dir else _default_state_dir(env),
        smtp_host=smtp_host,
        smtp_port=int(parser.number("SMTP_PORT", 587, integer=True, minimum=1, maximum=65535)),
        smtp_security=parser.choice("SMTP_SECURITY", "starttls", ("starttls", "tls", "none")),
        smtp_tls_ca_file=parser.readable_file("SMTP_TLS_CA_FILE"),
        smtp_user=smtp_user,
        smtp_password=parser.secret("SMTP_PASSWORD"),
        mail_from=mail_from,
        mail_to=mail_to,
        mail_on=parser.choice("MAIL_ON", "failure", ("failure", "always", "never")),
        repository_password=parser.secret("BACKUP_REPOSITORY_PASSWORD"),
        new_repository_password=parser.secret("BACKUP_NEW_REPOSITORY_PASSWORD"),
        encryption=parser.choice("BACKUP_ENCRYPTION", "auto", ("auto", "none")),
        compression=parser.choice("BACKUP_COMPRESSION", "auto", ("auto", "max", "off")),
        s3_region=_parse_region(parser),
    )
    if state_dir and not Path(state_dir).expanduser().is_absolute():
        parser.fail("BACKUP_STATE_DIR", f"{state_dir} is not an absolute path")
    elif need_sources:  # the commands that write the state folder: backup, run, doctor
        _check_state_dir(parser, settings.state_dir)
    if settings.max_delay_seconds < settings.debounce_seconds:
        parser.fail("BACKUP_MAX_DELAY_SECONDS", "must be at least BACKUP_DEBOUNCE_SECONDS")
    if parser.problems:
        raise ConfigError(parser.problems)
    return settings


def _parse_region(parser: _Parser) -> str:
    """The region S3 requests are signed for: AWS_REGION, else AWS_DEFAULT_REGION (boto3's own order),
    else us-east-1, which SeaweedFS and MinIO accept by default."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        raw = parser.text(name)
        if raw is not None:
            if not _REGION.fullmatch(raw):
                parser.fail(name, f"{raw!r} is not a region name (such as us-east-1 or eu-west-3)")
                break
            return raw
    return "us-east-1"


def _is_mail_address(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    return bool(local) and bool(domain) and not any(c in address for c in "\r\n<>,; \t")


def _default_state_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".local", "state")
    return Path(base) / "watcher"
