"""config.load_settings / read_environment: every bad input, defaults, secrets, .env files.

`BAD_CONFIG` is also used by tests/unit/test_cli.py, which runs the same cases through the CLI.
Placeholders in its values are filled by `fill()`: {src} an existing source folder, {tmp} the
test's temporary folder, {file} an existing regular file, {secret} a readable secret file.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from watcher.config import Settings, Target, load_settings, read_environment
from watcher.errors import ConfigError, ExitCode

PASSWORD = "hunter2-Zq9"  # distinctive enough that finding it in any text is a leak


KEY_TEXT = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE=\n-----END OPENSSH PRIVATE KEY-----\n"

@pytest.fixture
def paths(tmp_path: Path) -> dict[str, str]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    regular = tmp_path / "regular.txt"
    regular.write_text("not a folder\n")
    secret = tmp_path / "secret.txt"
    secret.write_text(PASSWORD + "\n")
    (tmp_path / "key").write_text(KEY_TEXT)
    (tmp_path / "link-to-repo").symlink_to(tmp_path / "repo")
    return {"src": str(src), "tmp": str(tmp_path), "file": str(regular), "secret": str(secret)}


def fill(overrides: dict[str, str], paths: dict[str, str]) -> dict[str, str]:
    return {name: value.format(**paths) for name, value in overrides.items()}


def base_env(paths: dict[str, str]) -> dict[str, str]:
    """A valid configuration that each bad case spoils in one place."""
    return {
        "BACKUP_SOURCES": paths["src"],
        "BACKUP_TARGET": f"file://{paths['tmp']}/repo",
        "BACKUP_STATE_DIR": f"{paths['tmp']}/state",
        "HOME": f"{paths['tmp']}/home",
    }


def case(overrides: dict[str, str], variable: str, name: str):
    return pytest.param(overrides, variable, id=name)


BAD_CONFIG = [
    # sources
    case({"BACKUP_SOURCES": ""}, "BACKUP_SOURCES", "sources-missing"),
    case({"BACKUP_SOURCES": " , "}, "BACKUP_SOURCES", "sources-only-commas"),
    case({"BACKUP_SOURCES": "relative/folder"}, "BACKUP_SOURCES", "sources-relative"),
    case({"BACKUP_SOURCES": "{tmp}/does-not-exist"}, "BACKUP_SOURCES", "sources-missing-folder"),
    case({"BACKUP_SOURCES": "{file}"}, "BACKUP_SOURCES", "sources-a-file"),
    case({"BACKUP_SOURCES": "/"}, "BACKUP_SOURCES", "sources-the-root"),
    case({"BACKUP_SOURCES": "//"}, "BACKUP_SOURCES", "sources-the-root-twice"),
    case({"BACKUP_SOURCES": "{src},{src}/sub"}, "BACKUP_SOURCES", "sources-nested"),
    case({"BACKUP_SOURCES": "{src}/sub,{src}"}, "BACKUP_SOURCES", "sources-nested-reversed"),
    # target
    case({"BACKUP_TARGET": ""}, "BACKUP_TARGET", "target-missing"),
    case({"BACKUP_TARGET": "http://host/backups"}, "BACKUP_TARGET", "target-unknown-scheme"),
    case({"BACKUP_TARGET": "/plain/path"}, "BACKUP_TARGET", "target-no-scheme"),
    case({"BACKUP_TARGET": "file://somehost/backups"}, "BACKUP_TARGET", "target-file-with-host"),
    case({"BACKUP_TARGET": "file:relative/backups"}, "BACKUP_TARGET", "target-file-relative"),
    case({"BACKUP_TARGET": "sftp://user@host"}, "BACKUP_TARGET", "target-sftp-no-path"),
    case({"BACKUP_TARGET": "sftp://user@/srv/backups"}, "BACKUP_TARGET", "target-no-host"),
    case({"BACKUP_TARGET": "ftp://host/srv/backups"}, "BACKUP_TARGET", "target-no-user"),
    case({"BACKUP_TARGET": "sftp://user@host:abc/srv"}, "BACKUP_TARGET", "target-port-not-a-number"),
    case({"BACKUP_TARGET": "sftp://user@host:70000/srv"}, "BACKUP_TARGET", "target-port-too-big"),
    case({"BACKUP_TARGET": "sftp://user@127.0.0.1:0/srv"}, "BACKUP_TARGET", "target-port-zero"),
    case({"BACKUP_TARGET": "sftp://user@[::1/srv"}, "BACKUP_TARGET", "target-broken-ipv6"),
    case({"BACKUP_TARGET": "sftp://user@host/srv/../etc"}, "BACKUP_TARGET", "target-dotdot"),
    case({"BACKUP_TARGET": "ftps://user@host/srv/%2e%2e/etc"}, "BACKUP_TARGET", "target-encoded-dotdot"),
    case({"BACKUP_TARGET": "ftp://user@host/srv/./x"}, "BACKUP_TARGET", "target-dot"),
    case({"BACKUP_TARGET": "file:///srv/backups?x=1"}, "BACKUP_TARGET", "target-query"),
    case({"BACKUP_TARGET": "sftp://user@host/srv#frag"}, "BACKUP_TARGET", "target-fragment"),
    case({"BACKUP_TARGET": "s3://host/bucket", "BACKUP_TARGET_PASSWORD": "x"}, "BACKUP_TARGET", "target-s3-no-key-id"),
    case({"BACKUP_TARGET": "s3://KEY@host/", "BACKUP_TARGET_PASSWORD": "x"}, "BACKUP_TARGET", "target-s3-no-bucket"),
    case({"BACKUP_TARGET": "s3://KEY@host/Bad_Bucket", "BACKUP_TARGET_PASSWORD": "x"}, "BACKUP_TARGET",
         "target-s3-bad-bucket"),
    case({"BACKUP_TARGET": "s3://KEY@host/ab", "BACKUP_TARGET_PASSWORD": "x"}, "BACKUP_TARGET",
         "target-s3-short-bucket"),
    case({"BACKUP_TARGET": "s3://KEY@host/bucket/../x", "BACKUP_TARGET_PASSWORD": "x"}, "BACKUP_TARGET",
         "target-s3-dotdot"),
    case({"BACKUP_TARGET": "s3://KEY@host/bucket"}, "BACKUP_TARGET_PASSWORD", "target-s3-no-secret"),
    case({"BACKUP_TARGET": "s3+http://KEY@host/bucket", "BACKUP_TARGET_PASSWORD": "x", "AWS_REGION": "Mars 1"},
         "AWS_REGION", "s3-region"),
    # numbers
    case({"BACKUP_DEBOUNCE_SECONDS": "soon"}, "BACKUP_DEBOUNCE_SECONDS", "debounce-not-a-number"),
    case({"BACKUP_DEBOUNCE_SECONDS": "-1"}, "BACKUP_DEBOUNCE_SECONDS", "debounce-negative"),
    case({"BACKUP_DEBOUNCE_SECONDS": "nan"}, "BACKUP_DEBOUNCE_SECONDS", "debounce-nan"),
    case({"BACKUP_DEBOUNCE_SECONDS": "inf"}, "BACKUP_DEBOUNCE_SECONDS", "debounce-inf"),
    case({"BACKUP_MAX_DELAY_SECONDS": "-5"}, "BACKUP_MAX_DELAY_SECONDS", "max-delay-negative"),
    case({"BACKUP_MAX_DELAY_SECONDS": "NaN"}, "BACKUP_MAX_DELAY_SECONDS", "max-delay-nan"),
    case({"BACKUP_RESCAN_SECONDS": "hourly"}, "BACKUP_RESCAN_SECONDS", "rescan-not-a-number"),
    case({"BACKUP_RESCAN_SECONDS": "-Infinity"}, "BACKUP_RESCAN_SECONDS", "rescan-minus-inf"),
    case({"BACKUP_RETRIES": "0"}, "BACKUP_RETRIES", "retries-zero"),
    case({"BACKUP_RETRIES": "-3"}, "BACKUP_RETRIES", "retries-negative"),
    case({"BACKUP_RETRIES": "2.5"}, "BACKUP_RETRIES", "retries-not-whole"),
    case({"BACKUP_RETRIES": "many"}, "BACKUP_RETRIES", "retries-not-a-number"),
    case({"BACKUP_RETRY_MAX_SECONDS": "x"}, "BACKUP_RETRY_MAX_SECONDS", "retry-max-not-a-number"),
    case({"BACKUP_RETRY_MAX_SECONDS": "-1"}, "BACKUP_RETRY_MAX_SECONDS", "retry-max-negative"),
    case({"BACKUP_HEALTH_MAX_AGE_SECONDS": "0"}, "BACKUP_HEALTH_MAX_AGE_SECONDS", "health-age-zero"),
    case({"BACKUP_HEALTH_MAX_AGE_SECONDS": "inf"}, "BACKUP_HEALTH_MAX_AGE_SECONDS", "health-age-inf"),
    case({"BACKUP_KEEP_LAST": "-1"}, "BACKUP_KEEP_LAST", "keep-last-negative"),
    case({"BACKUP_KEEP_HOURLY": "x"}, "BACKUP_KEEP_HOURLY", "keep-hourly-not-a-number"),
    case({"BACKUP_KEEP_DAILY": "1.5"}, "BACKUP_KEEP_DAILY", "keep-daily-not-whole"),
    case({"BACKUP_KEEP_WEEKLY": "nan"}, "BACKUP_KEEP_WEEKLY", "keep-weekly-nan"),
    case({"BACKUP_KEEP_MONTHLY": "-2"}, "BACKUP_KEEP_MONTHLY", "keep-monthly-negative"),
    case({"BACKUP_KEEP_YEARLY": "ten"}, "BACKUP_KEEP_YEARLY", "keep-yearly-not-a-number"),
    case({"BACKUP_DEBOUNCE_SECONDS": "30", "BACKUP_MAX_DELAY_SECONDS": "10"},
         "BACKUP_MAX_DELAY_SECONDS", "max-delay-below-debounce"),
    # enums and booleans
    case({"BACKUP_WATCH_MODE": "inotify"}, "BACKUP_WATCH_MODE", "watch-mode"),
    case({"BACKUP_SSH_HOST_KEY": "yes"}, "BACKUP_SSH_HOST_KEY", "ssh-host-key"),
    case({"BACKUP_SSH_HOST_KEY": "accept-all"}, "BACKUP_SSH_HOST_KEY", "ssh-host-key-accept-all"),
    case({"SMTP_SECURITY": "ssl"}, "SMTP_SECURITY", "smtp-security"),
    case({"MAIL_ON": "sometimes"}, "MAIL_ON", "mail-on"),
    case({"BACKUP_TLS_VERIFY": "maybe"}, "BACKUP_TLS_VERIFY", "tls-verify"),
    # files that must be readable (as root every existing file is readable: use missing ones and folders)
    case({"BACKUP_SSH_KEY": "{tmp}/no-such-key"}, "BACKUP_SSH_KEY", "ssh-key-missing"),
    case({"BACKUP_SSH_KEY": "{src}"}, "BACKUP_SSH_KEY", "ssh-key-a-folder"),
    case({"BACKUP_SSH_KEY": "{secret}"}, "BACKUP_SSH_KEY", "ssh-key-not-a-key"),
    case({"BACKUP_TARGET_2": "sftp://bob@host/x", "BACKUP_TARGET_2_SSH_KEY": "{file}"},
         "BACKUP_TARGET_2_SSH_KEY", "targets-ssh-key-not-a-key"),
    case({"BACKUP_TLS_CA_FILE": "{tmp}/no-such-ca.pem"}, "BACKUP_TLS_CA_FILE", "tls-ca-missing"),
    case({"SMTP_TLS_CA_FILE": "{tmp}/no-such-ca.pem"}, "SMTP_TLS_CA_FILE", "smtp-ca-missing"),
    # mail
    case({"SMTP_PORT": "0"}, "SMTP_PORT", "smtp-port-zero"),
    case({"SMTP_PORT": "65536"}, "SMTP_PORT", "smtp-port-too-big"),
    case({"SMTP_PORT": "smtp"}, "SMTP_PORT", "smtp-port-not-a-number"),
    case({"SMTP_HOST": "mail.example.com", "MAIL_FROM": "me@example.com"}, "MAIL_TO", "smtp-host-without-mail-to"),
    case({"SMTP_HOST": "mail.example.com", "MAIL_TO": "you@example.com"}, "MAIL_FROM", "mail-from-missing"),
    case({"MAIL_TO": "nobody"}, "MAIL_TO", "mail-to-no-at"),
    case({"MAIL_TO": "ok@example.com,two words@example.com"}, "MAIL_TO", "mail-to-space"),
    case({"MAIL_TO": "<you@example.com>"}, "MAIL_TO", "mail-to-brackets"),
    case({"MAIL_TO": "you@"}, "MAIL_TO", "mail-to-no-domain"),
    case({"MAIL_TO": "@example.com"}, "MAIL_TO", "mail-to-no-local-part"),
    case({"MAIL_FROM": "me"}, "MAIL_FROM", "mail-from-no-at"),
    case({"MAIL_FROM": "me@example.com\r\nBcc: x@evil.example"}, "MAIL_FROM", "mail-from-header-injection"),
    # local state
    case({"BACKUP_STATE_DIR": "relative/state"}, "BACKUP_STATE_DIR", "state-dir-relative"),
    case({"BACKUP_STATE_DIR": "{file}"}, "BACKUP_STATE_DIR", "state-dir-a-file"),
    case({"BACKUP_STATE_DIR": "{file}/state"}, "BACKUP_STATE_DIR", "state-dir-below-a-file"),
    case({"BACKUP_STATE_DIR": "/proc/watcher-state"}, "BACKUP_STATE_DIR", "state-dir-cannot-be-created"),
    case({"BACKUP_STATE_DIR": "/proc/self"}, "BACKUP_STATE_DIR", "state-dir-not-writable"),
    # what goes into mail headers, and what a run would only refuse later
    case({"BACKUP_HOST": "box\r\nBcc: x@evil.example"}, "BACKUP_HOST", "host-header-injection"),
    case({"BACKUP_HOST": "tab\thost"}, "BACKUP_HOST", "host-control-character"),
    case({"BACKUP_EXCLUDE": "*.tmp,!"}, "BACKUP_EXCLUDE", "exclude-lone-bang"),
    case({"BACKUP_EXCLUDE": "[z-a]"}, "BACKUP_EXCLUDE", "exclude-bad-range"),
    case({"BACKUP_EXCLUDE": "\\"}, "BACKUP_EXCLUDE", "exclude-lone-backslash"),
    case({"BACKUP_RETRY_MAX_SECONDS": "1e15"}, "BACKUP_RETRY_MAX_SECONDS", "retry-max-huge"),
    case({"BACKUP_RETRY_MAX_SECONDS": "inf"}, "BACKUP_RETRY_MAX_SECONDS", "retry-max-inf"),
    case({"BACKUP_DEBOUNCE_SECONDS": "1e300"}, "BACKUP_DEBOUNCE_SECONDS", "debounce-huge"),
    case({"BACKUP_RESCAN_SECONDS": "9e18"}, "BACKUP_RESCAN_SECONDS", "rescan-huge"),
    case({"BACKUP_HEALTH_MAX_AGE_SECONDS": "1e12"}, "BACKUP_HEALTH_MAX_AGE_SECONDS", "health-age-huge"),
    case({"BACKUP_RETRIES": "10" * 20}, "BACKUP_RETRIES", "retries-huge"),
    case({"BACKUP_KEEP_LAST": "9" * 30}, "BACKUP_KEEP_LAST", "keep-last-huge"),
    # secrets given twice, or as unreadable files
    case({"BACKUP_TARGET_PASSWORD": PASSWORD, "BACKUP_TARGET_PASSWORD_FILE": "{secret}"},
         "BACKUP_TARGET_PASSWORD", "target-password-twice"),
    case({"SMTP_PASSWORD": PASSWORD, "SMTP_PASSWORD_FILE": "{secret}"}, "SMTP_PASSWORD", "smtp-password-twice"),
    case({"BACKUP_TARGET_PASSWORD_FILE": "{tmp}/no-such-secret"}, "BACKUP_TARGET_PASSWORD_FILE",
         "target-password-file-missing"),
    case({"BACKUP_TARGET_PASSWORD_FILE": "{src}"}, "BACKUP_TARGET_PASSWORD_FILE", "target-password-file-a-folder"),
    case({"SMTP_PASSWORD_FILE": "{tmp}/no-such-secret"}, "SMTP_PASSWORD_FILE", "smtp-password-file-missing"),
    # several targets: numbering, duplicates, settings of a target that is not set, each target's own values
    case({"BACKUP_TARGET_3": "file://{tmp}/three"}, "BACKUP_TARGET_3", "targets-gap"),
    case({"BACKUP_TARGET_2": "file://{tmp}/two", "BACKUP_TARGET_4": "file://{tmp}/four"}, "BACKUP_TARGET_4",
         "targets-gap-after-two"),
    case({"BACKUP_TARGET": "", "BACKUP_TARGET_2": "file://{tmp}/two"}, "BACKUP_TARGET_2",
         "targets-second-without-first"),
    case({"BACKUP_TARGET_10": "file://{tmp}/ten"}, "BACKUP_TARGET_10", "targets-ten"),
    case({"BACKUP_TARGET_1": "file://{tmp}/one"}, "BACKUP_TARGET_1", "targets-one-spelled-out"),
    case({"BACKUP_TARGET_0": "file://{tmp}/zero"}, "BACKUP_TARGET_0", "targets-zero"),
    case({"BACKUP_TARGET_02": "file://{tmp}/two"}, "BACKUP_TARGET_02", "targets-leading-zero"),
    case({"BACKUP_TARGET_12_PASSWORD": PASSWORD}, "BACKUP_TARGET_12_PASSWORD", "targets-twelve-password"),
    case({"BACKUP_TARGET_2": "file://{tmp}/repo/"}, "BACKUP_TARGET_2", "targets-duplicate-file"),
    case({"BACKUP_TARGET": "sftp://bob@host/srv/b", "BACKUP_TARGET_2": "sftp://bob@HOST:22/srv//b/"},
         "BACKUP_TARGET_2", "targets-duplicate-sftp"),
    case({"BACKUP_TARGET": "ftp://bob@host/srv/b", "BACKUP_TARGET_2": "ftps://bob@host/srv/b"},
         "BACKUP_TARGET_2", "targets-duplicate-ftp-and-ftps"),
    case({"BACKUP_TARGET_2": "file://{tmp}/two", "BACKUP_TARGET_3": "file://{tmp}/repo"},
         "BACKUP_TARGET_3", "targets-duplicate-of-the-first"),
    case({"BACKUP_TARGET_2": "file://{tmp}/link-to-repo"}, "BACKUP_TARGET_2", "targets-duplicate-through-a-symlink"),
    case({"BACKUP_TARGET_2_PASSWORD": PASSWORD}, "BACKUP_TARGET_2_PASSWORD", "targets-password-of-unset"),
    case({"BACKUP_TARGET_2_PASSWORD_FILE": "{secret}"}, "BACKUP_TARGET_2_PASSWORD_FILE",
         "targets-password-file-of-unset"),
    case({"BACKUP_TARGET_2_SSH_KEY": "{secret}"}, "BACKUP_TARGET_2_SSH_KEY", "targets-ssh-key-of-unset"),
    case({"BACKUP_TARGET_9_TLS_CA_FILE": "{secret}"}, "BACKUP_TARGET_9_TLS_CA_FILE", "targets-ca-file-of-unset"),
    case({"BACKUP_TARGET_2": "gopher://host/x"}, "BACKUP_TARGET_2", "targets-second-unknown-scheme"),
    case({"BACKUP_TARGET_2": "sftp://bob@host"}, "BACKUP_TARGET_2", "targets-second-no-path"),
    case({"BACKUP_TARGET_2": "sftp://bob@host/x", "BACKUP_TARGET_2_PASSWORD": PASSWORD,
          "BACKUP_TARGET_2_PASSWORD_FILE": "{secret}"}, "BACKUP_TARGET_2_PASSWORD", "targets-password-twice"),
    case({"BACKUP_TARGET_2": "sftp://bob@host/x", "BACKUP_TARGET_2_PASSWORD_FILE": "{tmp}/no-such-secret"},
         "BACKUP_TARGET_2_PASSWORD_FILE", "targets-password-file-missing"),
    case({"BACKUP_TARGET_2": "sftp://bob@host/x", "BACKUP_TARGET_2_SSH_KEY": "{tmp}/no-such-key"},
         "BACKUP_TARGET_2_SSH_KEY", "targets-ssh-key-missing"),
    case({"BACKUP_TARGET_2": "ftps://bob@host/x", "BACKUP_TARGET_2_TLS_CA_FILE": "{src}"},
         "BACKUP_TARGET_2_TLS_CA_FILE", "targets-ca-file-a-folder"),
    case({"BACKUP_TARGET_2": "gopher://host/x", "BACKUP_TARGET_2_SSH_KEY": "{tmp}/no-such-key"},
         "BACKUP_TARGET_2_SSH_KEY", "targets-ssh-key-missing-of-a-bad-target"),
    case({"BACKUP_TARGET_2": "file://{tmp}/two", "BACKUP_TARGET_2_SSH_KEY": "{secret}"},
         "BACKUP_TARGET_2_SSH_KEY", "targets-ssh-key-of-a-file-target"),
    case({"BACKUP_TARGET_2": "ftp://bob@host/x", "BACKUP_TARGET_2_TLS_CA_FILE": "{secret}"},
         "BACKUP_TARGET_2_TLS_CA_FILE", "targets-ca-file-of-plain-ftp"),
    case({"BACKUP_TARGET_2": "s3+http://KEY@host/bucket", "BACKUP_TARGET_2_PASSWORD": "x",
          "BACKUP_TARGET_2_TLS_CA_FILE": "{secret}"}, "BACKUP_TARGET_2_TLS_CA_FILE", "targets-ca-file-of-plain-s3"),
    case({"BACKUP_TARGET_2": "s3://KEY@host/bucket/x", "BACKUP_TARGET_2_PASSWORD": "x",
          "BACKUP_TARGET_3": "s3+http://OTHER@host:443/bucket/x", "BACKUP_TARGET_3_PASSWORD": "y"},
         "BACKUP_TARGET_3", "targets-duplicate-s3"),
]


def load_bad(overrides: dict[str, str], paths: dict[str, str]) -> ConfigError:
    env = {**base_env(paths), **fill(overrides, paths)}
    with pytest.raises(ConfigError) as caught:
        load_settings(env, need_sources=True)
    return caught.value


def test_base_env_is_valid(paths):
    settings = load_settings(base_env(paths), need_sources=True)
    assert settings.sources == (Path(paths["src"]),)
    assert settings.target == Target("file", f"{paths['tmp']}/repo")


@pytest.mark.parametrize(("overrides", "variable"), BAD_CONFIG)
def test_bad_input_is_a_config_error_naming_the_variable(paths, overrides, variable):
    error = load_bad(overrides, paths)
    assert error.exit_code == ExitCode.CONFIG == 2
    assert error.problems, "a ConfigError must list its problems"
    assert any(problem.startswith(f"{variable}:") for problem in error.problems), error.problems
    for problem in error.problems:
        assert "\n" not in problem and "\r" not in problem
        assert PASSWORD not in problem


def test_nested_sources_reported_once(paths):
    error = load_bad({"BACKUP_SOURCES": "{src},{src}/sub"}, paths)
    assert len([p for p in error.problems if p.startswith("BACKUP_SOURCES:")]) == 1


def test_same_source_twice_is_kept_once(paths):
    settings = load_settings({**base_env(paths), "BACKUP_SOURCES": f"{paths['src']}, {paths['src']}/"},
                             need_sources=True)
    assert settings.sources == (Path(paths["src"]),)


def test_every_problem_is_reported_at_once(paths):
    env = {
        **base_env(paths),
        "BACKUP_SOURCES": "relative",
        "BACKUP_TARGET": "gopher://host/x",
        "BACKUP_DEBOUNCE_SECONDS": "nan",
        "BACKUP_RETRIES": "0",
        "BACKUP_WATCH_MODE": "magic",
        "BACKUP_TLS_VERIFY": "perhaps",
        "BACKUP_SSH_KEY": f"{paths['tmp']}/missing-key",
        "SMTP_HOST": "mail.example.com",
        "SMTP_PORT": "99999",
        "MAIL_ON": "weekly",
        "BACKUP_STATE_DIR": "state",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env, need_sources=True)
    named = {problem.split(":", 1)[0] for problem in caught.value.problems}
    assert named >= {
        "BACKUP_SOURCES", "BACKUP_TARGET", "BACKUP_DEBOUNCE_SECONDS", "BACKUP_RETRIES", "BACKUP_WATCH_MODE",
        "BACKUP_TLS_VERIFY", "BACKUP_SSH_KEY", "SMTP_PORT", "MAIL_ON", "MAIL_TO", "MAIL_FROM", "BACKUP_STATE_DIR",
    }
    assert str(caught.value) == "; ".join(caught.value.problems)


def test_missing_target_and_sources_both_reported():
    with pytest.raises(ConfigError) as caught:
        load_settings({}, need_sources=True)
    named = [problem.split(":", 1)[0] for problem in caught.value.problems]
    assert sorted(named) == ["BACKUP_SOURCES", "BACKUP_TARGET"]


def test_defaults_match_the_spec(paths):
    env = {"BACKUP_SOURCES": paths["src"], "BACKUP_TARGET": "file:///srv/backups", "HOME": paths["tmp"]}
    settings = load_settings(env, need_sources=True)
    assert settings.exclude == ()
    assert settings.target == Target("file", "/srv/backups")
    assert settings.target.password is None
    assert settings.ssh_key is None
    assert settings.ssh_known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert settings.ssh_host_key == "strict"
    assert settings.tls_ca_file is None
    assert settings.tls_verify is True
    assert settings.debounce_seconds == 5
    assert settings.max_delay_seconds == 60
    assert settings.rescan_seconds == 3600
    assert settings.watch_mode == "auto"
    assert settings.retries == 5
    assert settings.retry_max_seconds == 300
    assert not settings.retention.is_set()
    assert settings.health_max_age_seconds == 7200
    assert settings.host == socket.gethostname()
    assert settings.state_dir == Path(paths["tmp"]) / ".local" / "state" / "watcher"
    assert settings.smtp_host is None
    assert settings.smtp_port == 587
    assert settings.smtp_security == "starttls"
    assert settings.smtp_tls_ca_file is None
    assert settings.smtp_user is None
    assert settings.smtp_password is None
    assert settings.mail_from is None
    assert settings.mail_to == ()
    assert settings.mail_on == "failure"
    assert settings.secrets() == []


def test_values_are_parsed(paths):
    env = {
        **base_env(paths),
        "BACKUP_SOURCES": f"{paths['src']}/sub",
        "BACKUP_EXCLUDE": "*.tmp, cache/ ,**/node_modules,",
        "BACKUP_SSH_KEY": f"{paths['tmp']}/key",
        "BACKUP_SSH_KNOWN_HOSTS": f"{paths['tmp']}/known_hosts",
        "BACKUP_SSH_HOST_KEY": "Accept-New",
        "BACKUP_TLS_VERIFY": "false",
        "BACKUP_DEBOUNCE_SECONDS": "0.5",
        "BACKUP_MAX_DELAY_SECONDS": "0.5",
        "BACKUP_RESCAN_SECONDS": "0",
        "BACKUP_WATCH_MODE": "POLL",
        "BACKUP_RETRIES": "1",
        "BACKUP_KEEP_DAILY": "7",
        "BACKUP_KEEP_LAST": "0",
        "BACKUP_HOST": "box",
        "SMTP_HOST": "mail.example.com",
        "SMTP_PORT": "465",
        "SMTP_SECURITY": "tls",
        "SMTP_USER": "me@example.com",
        "MAIL_TO": "a@example.com, b@example.com",
        "MAIL_ON": "always",
    }
    settings = load_settings(env, need_sources=True)
    assert settings.sources == (Path(paths["src"]) / "sub",)
    assert settings.exclude == ("*.tmp", "cache/", "**/node_modules")
    assert settings.ssh_key == Path(paths["tmp"]) / "key"
    assert settings.ssh_known_hosts == Path(paths["tmp"]) / "known_hosts"
    assert settings.ssh_host_key == "accept-new"
    assert settings.tls_verify is False
    assert (settings.debounce_seconds, settings.max_delay_seconds, settings.rescan_seconds) == (0.5, 0.5, 0)
    assert settings.watch_mode == "poll"
    assert settings.retries == 1
    assert settings.retention.daily == 7 and settings.retention.last is None and settings.retention.is_set()
    assert settings.retention.hourly is None
    assert settings.host == "box"
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_security) == ("mail.example.com", 465, "tls")
    assert settings.mail_from == "me@example.com"  # defaults to SMTP_USER
    assert settings.mail_to == ("a@example.com", "b@example.com")
    assert settings.mail_on == "always"


def test_smtp_user_that_is_not_an_address_does_not_matter_without_smtp_host(paths):
    # SMTP_USER is often a login name ("apikey"); with mail off it must not spoil the configuration.
    settings = load_settings({**base_env(paths), "SMTP_USER": "apikey"})
    assert settings.smtp_host is None


def test_smtp_user_login_name_with_explicit_mail_from(paths):
    env = {**base_env(paths), "SMTP_HOST": "mail.example.com", "SMTP_USER": "apikey",
           "MAIL_FROM": "backup@example.com", "MAIL_TO": "me@example.com"}
    settings = load_settings(env)
    assert settings.mail_from == "backup@example.com"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("file:///srv/backups", Target("file", "/srv/backups")),
        ("file:///srv/backups/", Target("file", "/srv/backups")),
        ("file://localhost/srv/backups", Target("file", "/srv/backups")),
        ("sftp://bob@host/srv/backups", Target("sftp", "/srv/backups", "host", 22, "bob")),
        ("sftp://bob@host:2222/", Target("sftp", "/", "host", 2222, "bob")),
        ("ftp://bob@host/x", Target("ftp", "/x", "host", 21, "bob")),
        ("ftps://bob@host:990/x//y/", Target("ftps", "/x/y", "host", 990, "bob")),
        ("SFTP://b%40ob@[::1]:2200/srv", Target("sftp", "/srv", "::1", 2200, "b@ob")),
    ],
)
def test_targets_are_parsed(raw, expected):
    assert load_settings({"BACKUP_TARGET": raw}).target == expected


@pytest.mark.parametrize(
    ("raw", "described"),
    [
        ("file:///srv/backups", "file:///srv/backups"),
        ("sftp://bob@host/srv", "sftp://bob@host/srv"),
        ("sftp://bob@host:22/srv", "sftp://bob@host/srv"),
        ("ftps://bob@host:2121/srv", "ftps://bob@host:2121/srv"),
        ("sftp://bob@[::1]:2200/srv", "sftp://bob@[::1]:2200/srv"),
    ],
)
def test_target_describe(raw, described):
    assert load_settings({"BACKUP_TARGET": raw}).target.describe() == described


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("s3://KEY@s3.example.org/bucket", Target("s3", "/bucket", "s3.example.org", 443, "KEY", "secret")),
        ("s3://KEY@host:9000/my.bucket/a//b/", Target("s3", "/my.bucket/a/b", "host", 9000, "KEY", "secret")),
        ("s3+http://KEY@127.0.0.1:8333/backups", Target("s3+http", "/backups", "127.0.0.1", 8333, "KEY", "secret")),
        ("s3+http://KEY@host/backups", Target("s3+http", "/backups", "host", 80, "KEY", "secret")),
    ],
)
def test_s3_targets_are_parsed(raw, expected):
    target = load_settings({"BACKUP_TARGET": raw, "BACKUP_TARGET_PASSWORD": "secret"}).target
    assert target == expected
    assert target.describe() == raw.replace(":443/", "/").replace("//b/", "/b").rstrip("/")


def test_s3_credentials_and_region_from_the_aws_variables():
    settings = load_settings({"BACKUP_TARGET": "s3://s3.example.org/bucket/prefix", "AWS_ACCESS_KEY_ID": "AKIA1",
                              "AWS_SECRET_ACCESS_KEY": PASSWORD, "AWS_DEFAULT_REGION": "eu-west-3"})
    assert settings.target.user == "AKIA1" and settings.target.password == PASSWORD
    assert settings.s3_region == "eu-west-3" and PASSWORD in settings.secrets()
    assert PASSWORD not in repr(settings) and PASSWORD not in settings.target.describe()
    both = {"BACKUP_TARGET": "s3://KEY@h/bucket", "BACKUP_TARGET_PASSWORD": "mine", "AWS_SECRET_ACCESS_KEY": "aws",
            "AWS_REGION": "us-west-2", "AWS_DEFAULT_REGION": "eu-west-3"}
    settings = load_settings(both)
    assert settings.target.password == "mine" and settings.target.user == "KEY" and settings.s3_region == "us-west-2"
    assert load_settings({"BACKUP_TARGET": "s3://KEY@h/bucket", "BACKUP_TARGET_PASSWORD": "x"}).s3_region == "us-east-1"


def test_s3_target_takes_its_own_ca_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = load_settings({"BACKUP_TARGET": "file:///srv/one", "BACKUP_TARGET_2": "s3://KEY@h/bucket",
                              "BACKUP_TARGET_2_PASSWORD": "x", "BACKUP_TARGET_2_TLS_CA_FILE": str(ca)})
    assert settings.targets[1].tls_ca_file == ca


def test_password_inside_the_url_is_taken_and_never_shown():
    encoded = PASSWORD.replace("-", "%2D") + "%40x"
    settings = load_settings({"BACKUP_TARGET": f"sftp://bob:{encoded}@host:2222/srv/backups"})
    target = settings.target
    assert target.password == PASSWORD + "@x"
    assert target.user == "bob" and target.host == "host" and target.port == 2222
    assert PASSWORD not in target.describe() and encoded not in target.describe()
    assert target.describe() == "sftp://bob@host:2222/srv/backups"
    for text in (repr(settings), str(settings), repr(target)):
        assert PASSWORD not in text and encoded not in text
    assert settings.secrets() == [PASSWORD + "@x"]


def test_password_variable_wins_over_the_url_and_is_hidden():
    settings = load_settings({"BACKUP_TARGET": "ftp://bob:old-secret@host/x", "BACKUP_TARGET_PASSWORD": PASSWORD})
    assert settings.target.password == PASSWORD
    assert PASSWORD not in repr(settings) and "old-secret" not in repr(settings)


def test_smtp_password_is_hidden_from_repr():
    settings = load_settings({"BACKUP_TARGET": "file:///x", "SMTP_PASSWORD": PASSWORD})
    assert settings.smtp_password == PASSWORD
    assert PASSWORD not in repr(settings)
    assert settings.secrets() == [PASSWORD]


@pytest.mark.parametrize(
    "raw",
    [
        f"gopher://bob:{PASSWORD}@host/x",
        f"sftp://bob:{PASSWORD}@host:port/x",
        f"sftp://bob:{PASSWORD}@host:99999/x",
        f"sftp://bob:{PASSWORD}@host/a/../b",
        f"sftp://bob:{PASSWORD}@host/x?q=1",
        f"sftp://bob:{PASSWORD}@host",
        f"file://bob:{PASSWORD}@host/x",
        f"sftp://:{PASSWORD}@host/x",
    ],
)
def test_password_in_a_bad_url_is_not_in_the_error(raw):
    with pytest.raises(ConfigError) as caught:
        load_settings({"BACKUP_TARGET": raw})
    assert caught.value.problems[0].startswith("BACKUP_TARGET:")
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\n\n", ""])
def test_file_secrets_have_the_trailing_newline_stripped(tmp_path, ending):
    target_file = tmp_path / "target_password"
    target_file.write_bytes(f"{PASSWORD}{ending}".encode())
    smtp_file = tmp_path / "smtp_password"
    smtp_file.write_bytes(f" spaces kept {ending}".encode())
    settings = load_settings({
        "BACKUP_TARGET": "sftp://bob@host/x",
        "BACKUP_TARGET_PASSWORD_FILE": str(target_file),
        "SMTP_PASSWORD_FILE": str(smtp_file),
    })
    assert settings.target.password == PASSWORD
    assert settings.smtp_password == " spaces kept "
    assert PASSWORD not in repr(settings)


def test_file_secret_that_is_not_text_is_a_config_error(tmp_path):
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError) as caught:
        load_settings({"BACKUP_TARGET": "file:///x", "SMTP_PASSWORD_FILE": str(binary)})
    assert caught.value.problems[0].startswith("SMTP_PASSWORD_FILE:")


def test_empty_secret_and_empty_file_variable_do_not_conflict(paths):
    settings = load_settings({**base_env(paths), "BACKUP_TARGET_PASSWORD": "", "SMTP_PASSWORD_FILE": " "})
    assert settings.secrets() == []


# -- read_environment ---------------------------------------------------------------------------


def test_dotenv_in_the_working_directory_is_read(tmp_path):
    (tmp_path / ".env").write_text("BACKUP_TARGET=file:///from/dotenv\nBACKUP_HOST='quoted host'\n# comment\n")
    env = read_environment({}, None, tmp_path)
    assert env["BACKUP_TARGET"] == "file:///from/dotenv"
    assert env["BACKUP_HOST"] == "quoted host"


def test_real_environment_wins_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text("BACKUP_TARGET=file:///from/dotenv\nBACKUP_HOST=dotenv-host\n")
    env = read_environment({"BACKUP_TARGET": "file:///from/environment"}, None, tmp_path)
    assert env["BACKUP_TARGET"] == "file:///from/environment"
    assert env["BACKUP_HOST"] == "dotenv-host"


def test_no_dotenv_is_fine(tmp_path):
    assert read_environment({"A": "b"}, None, tmp_path) == {"A": "b"}


def test_env_file_option_is_read_instead_of_dotenv(tmp_path):
    (tmp_path / ".env").write_text("BACKUP_HOST=from-dotenv\nBACKUP_EXCLUDE=*.tmp\n")
    chosen = tmp_path / "elsewhere" / "watcher.env"
    chosen.parent.mkdir()
    chosen.write_text("export BACKUP_HOST=from-env-file\n")
    env = read_environment({}, str(chosen), tmp_path)
    assert env["BACKUP_HOST"] == "from-env-file"
    assert "BACKUP_EXCLUDE" not in env
    assert read_environment({"BACKUP_HOST": "real"}, str(chosen), tmp_path)["BACKUP_HOST"] == "real"


@pytest.mark.parametrize("missing", ["no-such.env", "."])
def test_env_file_that_cannot_be_read_is_a_config_error(tmp_path, missing):
    with pytest.raises(ConfigError) as caught:
        read_environment({}, str(tmp_path / missing), tmp_path)
    assert caught.value.exit_code == 2
    assert caught.value.problems[0].startswith("--env-file:")


def test_dotenv_values_go_through_validation(tmp_path):
    (tmp_path / ".env").write_text("BACKUP_TARGET=file:///srv/b\nBACKUP_RETRIES=0\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(read_environment({}, None, tmp_path))
    assert [p.split(":")[0] for p in caught.value.problems] == ["BACKUP_RETRIES"]


# -- which variables a command needs ------------------------------------------------------------


def test_need_sources_false_works_with_only_the_target():
    settings = load_settings({"BACKUP_TARGET": "file:///srv/backups"}, need_sources=False)
    assert isinstance(settings, Settings)
    assert settings.sources == ()
    assert settings.target == Target("file", "/srv/backups")


def test_need_sources_false_ignores_missing_source_folders(tmp_path):
    settings = load_settings({"BACKUP_TARGET": "file:///srv/b", "BACKUP_SOURCES": str(tmp_path / "gone")})
    assert settings.target is not None


def test_need_sources_true_requires_them():
    with pytest.raises(ConfigError) as caught:
        load_settings({"BACKUP_TARGET": "file:///srv/backups"}, need_sources=True)
    assert [p.split(":")[0] for p in caught.value.problems] == ["BACKUP_SOURCES"]


def test_target_is_required_by_default():
    with pytest.raises(ConfigError) as caught:
        load_settings({})
    assert [p.split(":")[0] for p in caught.value.problems] == ["BACKUP_TARGET"]


def test_target_may_be_optional():
    assert load_settings({}, need_target=False).target is None


def test_a_bad_target_is_reported_once():
    with pytest.raises(ConfigError) as caught:
        load_settings({"BACKUP_TARGET": "http://x/y"})
    assert len(caught.value.problems) == 1


def test_a_source_whose_name_holds_a_line_break_is_refused(paths):
    weird = Path(paths["tmp"]) / "we\r\nird"
    weird.mkdir()
    error = load_bad({"BACKUP_SOURCES": str(weird)}, paths)
    assert [problem.split(":")[0] for problem in error.problems] == ["BACKUP_SOURCES"]
    assert "\n" not in str(error) and "control character" in str(error)


def test_the_state_folder_check_leaves_nothing_behind(paths):
    state = Path(paths["tmp"]) / "state"
    load_settings(base_env(paths), need_sources=True)
    assert not state.exists() and sorted(Path(paths["tmp"]).iterdir()) == sorted(
        [*(Path(paths[name]) for name in ("src", "file", "secret")), *(Path(paths["tmp"]) / name for name in
                                                                         ("link-to-repo", "key"))])
    state.mkdir()
    load_settings(base_env(paths), need_sources=True)
    assert list(state.iterdir()) == []


def test_bounds_are_in_the_message(paths):
    error = load_bad({"BACKUP_RETRY_MAX_SECONDS": "1e15"}, paths)
    assert error.problems == ["BACKUP_RETRY_MAX_SECONDS: '1e15' must be between 0 and 31622400"]


# -- several targets ------------------------------------------------------------------------------


def test_every_target_problem_is_reported_at_once(paths):
    error = load_bad({"BACKUP_TARGET_2": "file://{tmp}/repo", "BACKUP_TARGET_4": "file://{tmp}/four",
                      "BACKUP_TARGET_5_PASSWORD": PASSWORD, "BACKUP_TARGET_11": "file:///x"}, paths)
    named = sorted(problem.split(":", 1)[0] for problem in error.problems)
    assert named == ["BACKUP_TARGET_11", "BACKUP_TARGET_2", "BACKUP_TARGET_4", "BACKUP_TARGET_5_PASSWORD"]
    assert all(PASSWORD not in problem for problem in error.problems)


def test_targets_keep_their_numbers_and_their_own_settings(paths, tmp_path):
    own_key, shared_key, own_ca, shared_ca = (tmp_path / name for name in ("own-key", "key", "own-ca", "ca"))
    for path in (own_key, shared_key, own_ca, shared_ca):
        path.write_text(KEY_TEXT if "key" in path.name else "x")
    target_password = tmp_path / "three-password"
    target_password.write_text("third-Secret-77\n")
    env = {
        **base_env(paths),
        "BACKUP_TARGET_PASSWORD": "first-Secret-11",
        "BACKUP_SSH_KEY": str(shared_key),
        "BACKUP_TLS_CA_FILE": str(shared_ca),
        "BACKUP_TARGET_2": "sftp://bob:url-Secret-22@host/srv/b",
        "BACKUP_TARGET_2_SSH_KEY": str(own_key),
        "BACKUP_TARGET_3": "ftps://bob@host:2121/srv/b",
        "BACKUP_TARGET_3_PASSWORD_FILE": str(target_password),
        "BACKUP_TARGET_3_TLS_CA_FILE": str(own_ca),
        "BACKUP_TARGET_4": "sftp://carol:url-Secret-44@host/srv/b",
        "BACKUP_TARGET_4_PASSWORD": "fourth-Secret-44",
        "BACKUP_TARGET_5": "ftps://bob@host/srv/b",
    }
    settings = load_settings(env, need_sources=True)
    first, second, third, fourth, fifth = settings.targets
    assert settings.target is first
    assert [target.number for target in settings.targets] == [1, 2, 3, 4, 5]
    assert [target.variable for target in settings.targets] == [
        "BACKUP_TARGET", "BACKUP_TARGET_2", "BACKUP_TARGET_3", "BACKUP_TARGET_4", "BACKUP_TARGET_5"]
    assert second.label() == "target 2 (sftp://bob@host/srv/b)"
    assert (first.password, second.password, third.password, fourth.password, fifth.password) == (
        "first-Secret-11", "url-Secret-22", "third-Secret-77", "fourth-Secret-44", None)
    assert (first.ssh_key, second.ssh_key, fourth.ssh_key) == (shared_key, own_key, shared_key)
    assert (first.tls_ca_file, third.tls_ca_file, fifth.tls_ca_file) == (shared_ca, own_ca, shared_ca)
    assert sorted(settings.secrets()) == sorted(
        ["first-Secret-11", "url-Secret-22", "third-Secret-77", "fourth-Secret-44"])
    for secret in [*settings.secrets(), "url-Secret-44"]:
        assert secret not in repr(settings) and secret not in str(settings.targets)
        assert all(secret not in target.label() for target in settings.targets)


def test_the_first_targets_password_is_not_another_targets(paths):
    env = {**base_env(paths), "BACKUP_TARGET_PASSWORD": PASSWORD, "BACKUP_TARGET_2": "sftp://bob@host/srv"}
    assert load_settings(env).targets[1].password is None


def test_an_empty_numbered_variable_is_not_set(paths):
    settings = load_settings({**base_env(paths), "BACKUP_TARGET_2": " ", "BACKUP_TARGET_2_PASSWORD": ""})
    assert len(settings.targets) == 1


def test_nine_targets(paths):
    env = {**base_env(paths), **{f"BACKUP_TARGET_{n}": f"file://{paths['tmp']}/repo{n}" for n in range(2, 10)}}
    assert [target.path for target in load_settings(env).targets][1:] == [
        f"{paths['tmp']}/repo{n}" for n in range(2, 10)]


class _Recording(dict):
    """An environment that notes every variable the parser asks for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)

    def __getitem__(self, name):
        self.asked.add(name)
        return super().__getitem__(name)


def test_env_example_documents_every_variable_the_code_reads(paths):
    env = _Recording({**base_env(paths), **{f"BACKUP_TARGET_{n}": f"file:///srv/b{n}" for n in range(2, 9)},
                      "BACKUP_TARGET_9": "s3://s3.example.org/bucket", "AWS_ACCESS_KEY_ID": "KEY",
                      "AWS_SECRET_ACCESS_KEY": "secret"})
    load_settings(env, need_sources=True)
    example = (Path(__file__).parents[2] / "env.example").read_text()
    documented = set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", example))
    read = {re.sub(r"^BACKUP_TARGET_[3-9]", "BACKUP_TARGET_2", name) for name in env.asked
            if name.startswith(("BACKUP_", "SMTP_", "MAIL_", "AWS_"))}
    assert len(read) > 30
    assert read - documented == set()
    assert {"BACKUP_TARGET_2_PASSWORD_FILE", "BACKUP_TARGET_9"} <= documented


@pytest.mark.parametrize("zeros", [{"BACKUP_KEEP_LAST": "0"}, {"BACKUP_KEEP_LAST": "0", "BACKUP_KEEP_DAILY": "0"}])
def test_a_keep_count_of_0_is_not_set_as_in_restic(paths, zeros):
    """`--keep-last 0` is no rule in restic; read as "keep 0" it would forget all but the newest."""
    settings = load_settings({"BACKUP_TARGET": f"file://{paths['tmp']}/repo", **zeros})
    assert not settings.retention.is_set()
