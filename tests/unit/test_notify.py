"""The report mail's pieces, rendered without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from watcher.notify import RunReport, build_message, cap_log, should_send, subject
from watcher.snapshot import Summary

STARTED = datetime(2026, 11, 26, 13, 15, 0, tzinfo=UTC)


def report(**changes) -> RunReport:
    values = dict(ok=True, host="nas", sources=("/home/me/docs",), target="sftp://me@backup.example/srv",
                  started=STARTED, finished=STARTED + timedelta(seconds=3.2), snapshot_id="20261126T131500Z-3f2a9c1b",
                  summary=Summary(files=1204, bytes=123456789, new=3, changed=1, unchanged=1200, removed=2,
                                  bytes_read=4096, bytes_added=2048), log_text="line 1\nline 2\n")
    values.update(changes)
    return RunReport(**values)


@pytest.mark.parametrize(("mail_on", "clean", "previous", "sent"), [
    ("always", True, True, True),
    ("never", False, True, False),
    ("failure", False, None, True),
    ("failure", True, None, False),  # the very first run, clean: nothing to say
    ("failure", True, False, True),  # recovered: say so once
    ("failure", True, True, False),
])
def test_when_a_report_is_mailed(mail_on, clean, previous, sent):
    assert should_send(mail_on, clean, previous) is sent


def test_subjects():
    assert subject(report()) == "Success Backup on nas: /home/me/docs"
    assert subject(report(ok=False, error="x")).startswith("Error Backup on nas")
    assert "could not be read" in subject(report(warnings=("cannot read /x",)))


def test_body_reads_in_five_seconds():
    message = build_message(report(), "w@example.test", ("a@example.test", "b@example.test"), [])
    body = message.get_body(("plain",)).get_content()
    assert body.splitlines()[0] == "Backup succeeded on nas: snapshot 20261126T131500Z-3f2a9c1b."
    assert "3 new, 1 changed, 2 removed, 1200 unchanged (1204 in all, 117.7 MiB)" in body
    assert "4.0 KiB read, 2.0 KiB uploaded" in body
    assert "3.2 s (13:15:00 to 13:15:03 UTC, 2026-11-26)" in body
    assert message["To"] == "a@example.test, b@example.test"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "watcher-20261126T131500Z.log"


def test_failure_body_gives_cause_and_next_step():
    failed = report(ok=False, snapshot_id=None, summary=None, error="sftp://me@backup.example/srv: login refused",
                    next_step="needs a person: fix the password")
    body = build_message(failed, "w@example.test", ("a@example.test",), []).get_body(("plain",)).get_content()
    assert body.startswith("Backup FAILED on nas.\nCause: sftp://me@backup.example/srv: login refused\nNext: needs")


def test_secrets_are_redacted_from_every_part():
    leaky = report(ok=False, error="failed with password hunter2", log_text="login hunter2\n")
    text = build_message(leaky, "w@example.test", ("a@example.test",), ["hunter2"]).as_string()
    assert "hunter2" not in text


def test_long_logs_keep_head_and_tail_and_mark_the_cut():
    log = "".join(f"line {i:07d}\n" for i in range(200_000))  # ~2.6 MB
    capped = cap_log(log, limit=100_000, head=20_000)
    assert capped.startswith("line 0000000\n") and capped.endswith("line 0199999\n")
    assert "bytes of this log cut here" in capped
    assert len(capped.encode()) < 100_200
    assert cap_log("short\n") == "short\n"


def test_names_in_the_body_are_escaped():
    text = build_message(report(warnings=("/home/me/docs/a\nb\x1b[2J: cannot read",), error="x"), "w@example.test",
                         ("o@example.test",), []).get_body(("plain",)).get_content()
    assert "  /home/me/docs/a\\nb\\x1b[2J: cannot read\n" in text and "\x1b" not in text
