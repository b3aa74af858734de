"""The compose stack does what README "Docker" promises (SPEC "Container"): it comes up healthy, the
watcher runs as a non-root uid under tini, files dropped into ./data reach both servers within seconds
and restore byte for byte from each, both repositories are encrypted with a password that no server
container can read, and every run's report is in MailDev with its log attached.

These run first (modules run in name order); the ones that stop, kill and restart containers are in
test_stack_faults.py, on the same stack.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.container.conftest import (
    DEBOUNCE_SECONDS,
    PASSWORD_FILE,
    PROJECT,
    SERVICES,
    TARGETS,
    Stack,
    wait_for,
)

pytestmark = pytest.mark.timeout(1500)  # the first test builds the images

WATCHER_UID = 1000  # docker-compose.yml's default WATCHER_UID; the test .env keeps it
ARRIVAL_SECONDS = DEBOUNCE_SECONDS + 14  # "a few seconds later they are in a snapshot on both servers"


def test_every_service_is_healthy(ready_stack: Stack) -> None:
    """`up --wait` returned, and the engine itself says so: each service's HEALTHCHECK passes."""
    for service in SERVICES:
        state = ready_stack.container(service).attrs["State"]
        assert state["Running"], f"{service} is not running: {state}"
        assert state["Health"]["Status"] == "healthy", f"{service}: {state['Health']}"


def test_the_watcher_runs_as_a_non_root_uid_under_tini(ready_stack: Stack) -> None:
    """The image's USER, a command run in it, and the daemon's own process all have uid 1000, never 0;
    tini is PID 1 and the daemon its child, so that SIGTERM reaches the daemon."""
    container = ready_stack.container("watcher")
    assert container.attrs["Config"]["User"] == str(WATCHER_UID)
    whoami = ready_stack.run(["id", "-u"])
    assert (whoami.code, whoami.out.strip()) == (0, str(WATCHER_UID)), str(whoami)

    init = ready_stack.run(["cat", "/proc/1/comm", "/proc/1/status"])
    assert init.code == 0, str(init)
    assert init.out.splitlines()[0] == "tini"
    assert _uids(init.out) == {WATCHER_UID}

    # Children of PID 1 (a command run through exec has the shim as parent, seen as 0 here).
    children = ready_stack.run(["sh", "-c", 'for d in /proc/[0-9]*; do [ "$(cut -d" " -f4 $d/stat)" = 1 ] '
                                            '&& echo "${d#/proc/} $(tr "\\0" " " < $d/cmdline)"; done; exit 0'])
    assert children.code == 0, str(children)
    daemons = [line.split(" ", 1) for line in children.out.splitlines()]
    assert len(daemons) == 1 and daemons[0][1].rstrip().endswith("watcher run"), children.out
    pid = int(daemons[0][0])
    status = ready_stack.run(["cat", f"/proc/{pid}/status"])
    assert _uids(status.out) == {WATCHER_UID}, str(status)
    health = ready_stack.run(["cat", "/var/lib/watcher/health.json"])
    assert f'"pid": {pid},' in health.out, f"the health file names another daemon than {pid}: {health}"


def _uids(status: str) -> set[int]:
    """The real, effective, saved and file-system uids of a /proc/PID/status."""
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return {int(value) for value in line.split()[1:]}


FILES = {
    "notes.txt": b"the first line\nthe second line\n" * 200,
    "nested/deeper/table.csv": b"".join(b"%d,%d,%d\n" % (i, i * i, i * 7) for i in range(3000)),
    "nested/Ünïcödé façade 日本語.txt": "Grüße aus Köln, 日本語のテキスト\n".encode() * 100,
    "nested/empty": b"",
}


def test_what_a_server_publishes_is_the_watchers_alone(ready_stack: Stack) -> None:
    """A server's login account (a client that has its password) can neither read nor replace what the
    server hands the watcher (its password, the host key or CA the watcher trusts), and neither server
    sees the other's: each publishes through a volume that only it and the watcher mount."""
    for service, account, files in (("sftp", "watcher-sftp", ("password", "known_hosts")),
                                     ("ftp", "watcher-ftp", ("password", "ca.pem"))):
        container = ready_stack.container(service)
        for name in files:
            path = f"/run/watcher-public/{name}"
            assert ready_stack.run(["test", "-s", path], service).code == 0, f"{service} publishes no {name}"
            read = container.exec_run(["cat", path], user=account)
            assert read.exit_code != 0, f"{account} can read {path}"
            replace = container.exec_run(["sh", "-c", f"chmod 600 {path} || mv /dev/null {path} || : > {path}"],
                                         user=account)
            assert replace.exit_code != 0, f"{account} can replace {path}"
            assert ready_stack.run(["test", "-r", f"/run/watcher-secrets/{service}/{name}"]).code == 0
        other = "ftp" if service == "sftp" else "sftp"
        assert ready_stack.run(["ls", f"/run/watcher-secrets/{other}"], service).code != 0


def test_dropped_files_reach_both_targets_and_restore_byte_for_byte(ready_stack: Stack) -> None:
    """Files moved into the bind-mounted ./data (a nested folder, a non-ASCII name, an empty file and a
    few MiB of random bytes) are in a snapshot on the SFTP and the FTPS server within the debounce and a
    few seconds; `watcher restore` from each gives back every byte, fetched out of the container."""
    files = {**FILES, "random.bin": os.urandom(3 * 1024 * 1024 + 4321)}
    began = time.monotonic()
    folder = ready_stack.drop(files, "arrive")
    snapshots = {}
    for target in TARGETS:
        left = ARRIVAL_SECONDS - (time.monotonic() - began)
        snapshots[target] = ready_stack.wait_snapshot(target, folder, files, timeout=max(left, 0.0))
    print(f"in a snapshot on both targets {time.monotonic() - began:.1f} s after the drop")

    expected = {f"{folder}/{relative}": content for relative, content in files.items()}
    for target, snapshot in snapshots.items():
        restored = ready_stack.restore(target, snapshot, folder)
        assert restored.keys() == expected.keys(), f"target {target}"
        for path, content in expected.items():
            assert restored[path] == content, f"target {target}: {path} differs"


def test_both_repositories_are_encrypted_with_a_password_no_server_can_read(ready_stack: Stack) -> None:
    """No BACKUP_REPOSITORY_PASSWORD in the test's .env: the one-shot `repository-password` service made a
    random one (saying so, never printing it) into its volume, 0400 and the watcher's; the watcher reads it
    from that file (not from its environment), `doctor` says both repositories are encrypted, and each
    server's `config` says format 2, AES-256-GCM. The servers' containers do not mount that volume, and
    the password is in none of their files (public volume, own keys, repositories, /etc, /tmp...)."""
    files = {"sealed.txt": b"only ciphertext on the servers\n" * 100}
    folder = ready_stack.drop(files, "sealed")
    for target in TARGETS:
        ready_stack.wait_snapshot(target, folder, files, timeout=ARRIVAL_SECONDS)

    once = ready_stack.container("repository-password")
    assert (once.attrs["State"]["Status"], once.attrs["State"]["ExitCode"]) == ("exited", 0), once.attrs["State"]
    said = once.logs().decode(errors="replace")
    assert "made a new random password" in said and "LOSING IT LOSES THE BACKUPS" in said, said

    shown = ready_stack.run(["stat", "-c", "%a %u", PASSWORD_FILE])
    assert (shown.code, shown.out.strip()) == (0, f"400 {WATCHER_UID}"), str(shown)
    read = ready_stack.run(["cat", PASSWORD_FILE])
    password = read.out
    assert read.code == 0 and re.fullmatch(r"[A-Za-z0-9]{32}", password), f"exit {read.code}, {len(password)} chars"
    assert password not in said
    environment = ready_stack.container("watcher").attrs["Config"]["Env"]
    assert f"BACKUP_REPOSITORY_PASSWORD_FILE={PASSWORD_FILE}" in environment
    assert not [variable for variable in environment if variable.startswith("BACKUP_REPOSITORY_PASSWORD=")]
    assert not [variable for variable in environment if password in variable]

    doctor = ready_stack.watcher("doctor")
    assert doctor.code == 0, str(doctor)
    for target in TARGETS:
        assert re.search(rf"^ok +target {target} repository: \d+ snapshots, \d+ packs, encrypted \(format 2\)$",
                         doctor.out, re.M), doctor.out
    assert password not in doctor.out + doctor.err

    for server in ("sftp", "ftp"):
        config = ready_stack.run(["cat", "/srv/backups/config"], service=server)
        assert config.code == 0, f"{server}: {config}"
        assert {key: json.loads(config.out).get(key) for key in ("version", "encryption")} == {
            "version": 2, "encryption": "aes-256-gcm"}, f"{server}: {config.out}"

        mounts = ready_stack.container(server).attrs["Mounts"]
        assert not [mount for mount in mounts if "repository-password" in str(mount.get("Name"))
                    or mount["Destination"].startswith("/run/watcher-repository")], mounts
        absent = ready_stack.run(["test", "-e", PASSWORD_FILE], service=server)
        assert absent.code == 1, f"{server}: {absent}"
        # grep exits 1 when nothing matches (0: found; 2: an error). The password comes in the
        # environment, not the command line, so that grep's own arguments cannot match.
        search = ('for d in /run /var/lib/server /srv/backups /etc /tmp /root /home /var/log; do '
                  '[ -d "$d" ] && set -- "$@" "$d"; done; grep -rqsF -D skip -e "$SEARCHED" "$@"; echo "grep $?"')
        searched = ready_stack.run(["sh", "-c", search, "sh"], service=server, environment={"SEARCHED": password})
        assert searched.code == 0 and searched.out.strip().endswith("grep 1"), f"{server}: {searched}"


def test_the_servers_outlive_the_sessions_of_commands(ready_stack: Stack) -> None:
    """Commands run beside the daemon (`snapshots` on each target, `doctor`) open and close sessions on
    the servers; no server process dies of it (vsftpd as PID 1 crashed at the end of every session,
    taking the daemon's own session down with it), and every check of `doctor` passes."""
    servers = ("sftp", "ftp", "mail")
    before = {service: ready_stack.container(service).attrs["State"]["StartedAt"] for service in servers}
    since = time.time()
    for target in (*TARGETS, *TARGETS):
        listed = ready_stack.watcher("snapshots", "--json", "--target", str(target))
        assert listed.code == 0, str(listed)
    doctor = ready_stack.watcher("doctor")
    assert doctor.code == 0, str(doctor)
    # A crash shows as a `die` event at once; two seconds leave room for the last session's end.
    died = list(ready_stack.client.events(since=since, until=time.time() + 2, decode=True,
                                          filters={"event": "die", "label": f"com.docker.compose.project={PROJECT}"}))
    assert not died, [(event["Actor"]["Attributes"]["name"], event["Actor"]["Attributes"].get("exitCode"))
                      for event in died]
    for service in servers:
        state = ready_stack.container(service).attrs
        assert (state["RestartCount"], state["State"]["StartedAt"]) == (0, before[service]), service


def _target_lines(target: int, snapshot: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A run's line for a target that has `snapshot` as its newest, as the mail's body and as the log say
    it: saved by that run, or by an earlier one (a target's own health run, every half
    BACKUP_HEALTH_MAX_AGE_SECONDS, may have taken the files first)."""
    label = rf"target {target} \({re.escape(TARGETS[target])}\): "
    in_mail = rf"^  {label}(?:(?P<saved>snapshot {snapshot} \(\d+ new, )|no change since snapshot {snapshot}\r?$)"
    in_log = rf"{label}(?:snapshot {snapshot} saved: |no change since snapshot {snapshot}: )"
    return re.compile(in_mail, re.M), re.compile(in_log)


def test_the_report_mail_has_the_summary_and_the_run_log(ready_stack: Stack) -> None:
    """The run's mail (MAIL_ON=always) says Success Backup on the host `watcher`, has one line per
    target naming the snapshot it holds, and the run's log attached as watcher-<UTC time>.log with those
    same lines; no password of the servers or of the repositories is in either."""
    files = {"report.txt": b"for the mail\n"}
    folder = ready_stack.drop(files, "mail")
    ids = {target: ready_stack.wait_snapshot(target, folder, files, timeout=ARRIVAL_SECONDS) for target in TARGETS}
    lines = {target: _target_lines(target, snapshot) for target, snapshot in ids.items()}

    def the_mail() -> dict | None:
        for mail in ready_stack.mails():
            found = [in_mail.search(mail.get("text", "")) for in_mail, _ in lines.values()]
            if all(found) and any(match and match.group("saved") for match in found):
                return mail
        return None

    mail = wait_for(the_mail, 20, f"mail naming snapshots {ids} for both targets", interval=0.5)
    assert mail["subject"].startswith("Success Backup on watcher: /data"), mail["subject"]
    text = mail["text"]
    assert "Backup succeeded on watcher for every target." in text, text

    logs = [a for a in mail.get("attachments") or [] if re.fullmatch(r"watcher-\d{8}T\d{6}Z\.log", a["fileName"])]
    assert len(logs) == 1, mail.get("attachments")
    attachment = logs[0]
    assert attachment["contentType"].startswith("text/plain"), attachment
    assert int(attachment["length"]) > 0, attachment
    log = ready_stack.attachment(mail, attachment).decode()
    assert "run started" in log, log
    for target, (_, in_log) in lines.items():
        assert in_log.search(log), f"target {target}'s line is not in the attached log:\n{log}"
    assert re.search(r"target \d \(.*\): snapshot \S+ saved: ", log), log  # the run that saved it

    for name in ("/run/watcher-secrets/sftp/password", "/run/watcher-secrets/ftp/password", PASSWORD_FILE):
        password = ready_stack.run(["cat", name])
        secret = password.out.strip()
        assert password.code == 0 and len(secret) >= 16, f"{name}: exit {password.code}, {len(secret)} characters"
        assert secret not in text + log + mail["subject"], f"{name} is in the mail"
