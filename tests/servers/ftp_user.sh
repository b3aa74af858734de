#!/bin/sh
# Creates what the test vsftpd (tests/servers/vsftpd/vsftpd.conf) needs to let a user in: a real
# system account, the PAM service the config names, and vsftpd's empty secure_chroot_dir.
# Idempotent; run as root (install_all.sh --test does; so can the docker-compose "ftp" service).
#
# The password is a test-only value, known to tests/fixtures/ftp.py (FTP_TEST_PASSWORD, which a
# test checks against this file). The account has no shell (nologin), so it can do nothing but
# FTP; the PAM service lets in this account only.
set -eu

FTP_USER=watcher-ftp
FTP_PASSWORD=watcher-ftp-test-only
# The container (docker/ftp/start.sh) passes a file holding the stack's own password instead.
if [ $# -gt 0 ]; then
    FTP_PASSWORD=$(cat "$1")
fi
PAM_SERVICE=watcher-ftp

if [ "$(id -u)" -ne 0 ]; then
    echo "ftp_user.sh: must run as root" >&2
    exit 1
fi

if ! id "$FTP_USER" >/dev/null 2>&1; then
    # ACCOUNT_UID: the container gives the account a fixed uid (docker/secrets.sh); here: the next free one.
    useradd ${ACCOUNT_UID:+--uid "$ACCOUNT_UID"} --create-home --user-group --shell /usr/sbin/nologin \
        --comment "watcher FTP tests" "$FTP_USER"
fi
echo "$FTP_USER:$FTP_PASSWORD" | chpasswd
usermod --unlock "$FTP_USER" >/dev/null 2>&1 || true

# Debian's /etc/pam.d/vsftpd wants a shell listed in /etc/shells and honours /etc/ftpusers: both
# would refuse a nologin account. This service checks the password and lets in no other user;
# vsftpd's own delay_failed_login slows down guessing, so pam_unix adds no delay of its own.
cat > "/etc/pam.d/$PAM_SERVICE" <<PAM
# Written by watcher's tests/servers/ftp_user.sh for tests/servers/vsftpd/vsftpd.conf.
auth     required  pam_succeed_if.so quiet user = $FTP_USER
auth     required  pam_unix.so nodelay
account  required  pam_unix.so
session  required  pam_unix.so
PAM
chmod 0644 "/etc/pam.d/$PAM_SERVICE"

# vsftpd refuses to start without its secure_chroot_dir: empty, owned by root, not writable.
install -d -m 0755 -o root -g root /var/run/vsftpd/empty
