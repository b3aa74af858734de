#!/bin/sh
# Creates the account that the test sshd (tests/servers/sshd/sshd_config) lets in: sshd can only
# log in a real system user. Idempotent; run as root (install_all.sh --test does).
#
# The password is a test-only value, known to tests/fixtures/sftp.py (SFTP_TEST_PASSWORD, which
# a test checks against this file). The account can do nothing but SFTP: sshd_config forces
# internal-sftp and allows no other user, and its shell is nologin.
set -eu

SFTP_USER=watcher-sftp
SFTP_PASSWORD=watcher-sftp-test-only
# The container (docker/sftp/start.sh) passes a file holding the stack's own password instead.
if [ $# -gt 0 ]; then
    SFTP_PASSWORD=$(cat "$1")
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "sftp_user.sh: must run as root" >&2
    exit 1
fi

if ! id "$SFTP_USER" >/dev/null 2>&1; then
    # ACCOUNT_UID: the container gives the account a fixed uid (docker/secrets.sh); here: the next free one.
    useradd ${ACCOUNT_UID:+--uid "$ACCOUNT_UID"} --create-home --user-group --shell /usr/sbin/nologin \
        --comment "watcher SFTP tests" "$SFTP_USER"
fi
echo "$SFTP_USER:$SFTP_PASSWORD" | chpasswd
usermod --unlock "$SFTP_USER" >/dev/null 2>&1 || true

# sshd refuses to start without its privilege separation folder (systemd makes it at boot).
install -d -m 0755 -o root -g root /run/sshd
