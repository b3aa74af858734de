"""Report mails against a real SMTP server process (aiosmtpd with STARTTLS and AUTH)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.fixtures.smtp import SMTP_PASSWORD, SmtpServer
from tests.helpers import make_tree
from watcher.cli import main

pytestmark = pytest.mark.timeout(120)
TARGET_PASSWORD = "target-Pa55word-0815"


@pytest.fixture
def setup(tmp_path: Path, smtp_server: SmtpServer) -> tuple[dict[str, str], Path]:
    source = make_tree(tmp_path / "src", {"a.txt": "alpha", "sub/b.txt": "beta"})
    env = {
        "BACKUP_SOURCES": str(source),
        "BACKUP_ENCRYPTION": "none",
        "BACKUP_TARGET": f"file://{tmp_path}/repo",
        "BACKUP_STATE_DIR": str(tmp_path / "state"),
        "BACKUP_HOST": "testhost",
        "BACKUP_TARGET_PASSWORD": TARGET_PASSWORD,
        **smtp_server.environment(),
    }
    return env, source


def test_success_mail_has_summary_and_log_attached(setup, smtp_server, capsys):
    env, source = setup
    assert main(["backup"], {**env, "MAIL_ON": "always"}) == 0
    [message] = smtp_server.messages()
    [envelope] = smtp_server.envelopes()
    assert envelope["rcpt_tos"] == ["owner@example.test", "second@example.test"]
    assert envelope["tls"] and envelope["authenticated"]
    assert "Success Backup" in message["Subject"] and "testhost" in message["Subject"]
    assert str(source) in message["Subject"]
    assert message["Date"] and message["Message-ID"]
    body = message.get_body(("plain",)).get_content()
    assert re.search(r"snapshot \d{8}T\d{6}Z-[0-9a-f]{8}", body)
    assert "2 new, 0 changed, 0 removed, 0 unchanged" in body
    assert f"file://{Path(env['BACKUP_TARGET'][7:])}" in body
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_content_type() == "text/plain"
    assert attachment.get_content_charset() == "utf-8"
    assert re.fullmatch(r"watcher-\d{8}T\d{6}Z\.log", attachment.get_filename())
    assert "saved" in attachment.get_content()


def test_mail_on_failure_mails_failures_and_the_first_recovery(setup, smtp_server, tmp_path):
    env, source = setup
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the repository folder should be")
    broken = {**env, "BACKUP_TARGET": f"file://{blocker}/repo"}
    assert main(["backup"], broken) == 1
    assert main(["backup"], env) == 0  # recovery: mailed
    (source / "c.txt").write_text("gamma")
    assert main(["backup"], env) == 0  # clean again: not mailed
    subjects = [message["Subject"] for message in smtp_server.messages()]
    assert len(subjects) == 2
    assert "Error Backup" in subjects[0] and "Success Backup" in subjects[1]
    failure = smtp_server.messages()[0].get_body(("plain",)).get_content()
    assert "Cause:" in failure and "Next:" in failure


def test_mail_on_never_sends_nothing(setup, smtp_server):
    env, _ = setup
    assert main(["backup"], {**env, "MAIL_ON": "never", "BACKUP_TARGET": "file:///proc/nope"}) == 1
    assert smtp_server.messages() == []


def test_mail_server_down_never_fails_the_backup(setup, smtp_server, capsys):
    env, _ = setup
    smtp_server.stop()
    assert main(["backup"], {**env, "MAIL_ON": "always"}) == 0
    logs = "".join(path.read_text() for path in Path(env["BACKUP_STATE_DIR"], "logs").glob("*.log"))
    assert "report mail not sent" in logs and "unreachable" in logs


def test_wrong_smtp_password_is_one_clear_log_line(setup, smtp_server, capsys):
    env, _ = setup
    assert main(["backup"], {**env, "MAIL_ON": "always", "SMTP_PASSWORD": "wrong-Secret"}) == 0
    err = capsys.readouterr().err
    assert "refused the login of reports@example.test" in err
    assert "wrong-Secret" not in err
    assert smtp_server.messages() == []


@pytest.mark.parametrize("security", ["tls", "none"])
def test_implicit_tls_and_plain_smtp(setup, smtp_server_factory, security):
    env, _ = setup
    server = smtp_server_factory(security, user=None if security == "none" else "reports@example.test")
    environ = {key: value for key, value in env.items() if not key.startswith("SMTP_")}
    assert main(["backup"], {**environ, **server.environment(), "MAIL_ON": "always"}) == 0
    assert len(server.messages()) == 1


def test_untrusted_certificate_is_refused(setup, smtp_server, tmp_path, capsys):
    env, _ = setup
    other_ca = tmp_path / "other-ca.pem"
    trustme = pytest.importorskip("trustme")
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    assert main(["backup"], {**env, "MAIL_ON": "always", "SMTP_TLS_CA_FILE": str(other_ca)}) == 0
    assert "certificate not trusted" in capsys.readouterr().err
    assert smtp_server.messages() == []


def test_doctor_checks_the_mail_server_without_sending(setup, smtp_server, capsys):
    env, _ = setup
    assert main(["doctor"], env) == 0
    assert "ok   mail server: 127.0.0.1" in capsys.readouterr().out
    assert main(["doctor"], {**env, "SMTP_PASSWORD": "nope"}) == 1
    assert "FAIL mail server" in capsys.readouterr().out
    assert smtp_server.messages() == []


def test_no_secret_in_any_log_mail_or_output(setup, smtp_server, tmp_path, capsys):
    env, _ = setup
    url_password = "url-Pw-9931"
    runs = [
        (["backup"], {**env, "MAIL_ON": "always"}),
        (["snapshots", "--json"], env),
        (["ls", "latest", "--json"], env),
        (["check"], env),
        (["doctor"], env),
        (["backup"], {**env, "MAIL_ON": "always", "BACKUP_TARGET": f"sftp://me:{url_password}@127.0.0.1:9/x"}),
    ]
    for argv, environ in runs:
        main(argv, {**environ, "BACKUP_RETRIES": "1"})
    captured = capsys.readouterr()
    texts = [captured.out, captured.err]
    texts += [path.read_text() for path in Path(env["BACKUP_STATE_DIR"], "logs").glob("*.log")]
    texts += [path.read_bytes().decode() for path in smtp_server.spool.glob("*")]
    assert len(smtp_server.messages()) == 2
    for text in texts:
        for secret in (SMTP_PASSWORD, TARGET_PASSWORD, url_password):
            assert secret not in text
    assert os.environ.get("SMTP_PASSWORD") is None


def test_an_unexpected_error_in_backup_is_one_line_exit_1_and_a_mail(setup, smtp_server, capsys, monkeypatch):
    env, _ = setup
    from watcher import cli

    def broken(*args, **kwargs):
        raise RuntimeError(f"injected fault\nover two lines, holding {SMTP_PASSWORD}")

    monkeypatch.setattr(cli, "attempt_backup", broken)
    assert main(["backup"], env) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    [line] = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert line == "error: unexpected RuntimeError: injected fault over two lines, holding ***"
    [message] = smtp_server.messages()
    assert "Error Backup" in message["Subject"]
    assert "Cause: unexpected RuntimeError: injected fault" in message.get_body(("plain",)).get_content()
    attached = next(message.iter_attachments()).get_content()
    assert "Traceback (most recent call last)" in attached and "raise RuntimeError" in attached
    assert SMTP_PASSWORD not in attached + captured.err + captured.out


def test_an_unexpected_error_in_another_command_is_one_line_exit_1(setup, capsys, monkeypatch):
    env, _ = setup
    from watcher import cli

    assert main(["backup"], env) == 0
    monkeypatch.setattr(cli, "list_entries", lambda *args: iter([None]))  # `None.as_line()`: AttributeError
    capsys.readouterr()
    assert main(["ls", "latest"], env) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.startswith("error: unexpected AttributeError: ")
    assert len(captured.err.splitlines()) == 1


@pytest.mark.parametrize("host", ["nöd", "服务器", "büro pc"])
def test_a_non_ascii_host_name_is_mailed_with_its_real_name(setup, smtp_server, host):
    env, _ = setup
    assert main(["backup"], {**env, "BACKUP_HOST": host, "MAIL_ON": "always"}) == 0
    [message] = smtp_server.messages()
    assert f"Success Backup on {host}:" in message["Subject"]
    assert f"Backup succeeded on {host}: snapshot" in message.get_body(("plain",)).get_content()
    message_id = message["Message-ID"]
    assert message_id.isascii() and " " not in message_id and re.fullmatch(r"<[^<>@]+@[A-Za-z0-9.-]+>", message_id)


NON_ASCII_PASSWORD = "pässwörd-服务-4711"


def test_a_non_ascii_smtp_password_logs_in_as_utf8(setup, smtp_server_factory, capsys):
    env, _ = setup
    server = smtp_server_factory(password=NON_ASCII_PASSWORD)
    environ = {**{key: value for key, value in env.items() if not key.startswith("SMTP_")}, **server.environment()}
    assert main(["doctor"], environ) == 0
    assert main(["backup"], {**environ, "MAIL_ON": "always"}) == 0
    [envelope] = server.envelopes()
    assert envelope["authenticated"]
    captured = capsys.readouterr()
    assert "ok   mail server: 127.0.0.1" in captured.out and "report mail not sent" not in captured.err


@pytest.mark.parametrize("wrong", ["wrong-ü-Secret", "wrong-服-Secret"])
def test_a_wrong_non_ascii_password_leaks_no_part_of_it(setup, smtp_server, capsys, wrong):
    env, _ = setup
    assert main(["doctor"], {**env, "SMTP_PASSWORD": wrong}) == 1
    assert main(["backup"], {**env, "SMTP_PASSWORD": wrong, "MAIL_ON": "always"}) == 0
    captured = capsys.readouterr()
    texts = [captured.out, captured.err]
    texts += [path.read_text() for path in Path(env["BACKUP_STATE_DIR"], "logs").glob("*.log")]
    assert "FAIL mail server: mail server 127.0.0.1:" in captured.out and "refused the login" in captured.out
    special = wrong.split("-")[1]
    for text in texts:
        assert special not in text and ascii(special).strip("'") not in text and "codec" not in text
