#!/bin/sh
# The `sftp` service: OpenSSH's sshd with tests/servers/sshd/sshd_config, the very file the tests'
# fixture starts sshd with. At first start it makes its host key; at every start it publishes the public
# key (as a known_hosts line for the name `sftp`) and the account password to the watcher.
set -eu
. /usr/local/lib/watcher/secrets.sh

key="$KEEP/ssh_host_ed25519_key"
if [ ! -s "$key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C sftp -f "$key"
    echo "sftp: made a new host key: $(ssh-keygen -l -f "$key.pub")" >&2
fi
password_file=$(account_password sftp "${SFTP_PASSWORD:-}")
ACCOUNT_UID=$SFTP_ACCOUNT_UID sh /usr/local/lib/watcher/sftp_user.sh "$password_file"
install -d -m 0700 -o watcher-sftp -g watcher-sftp /srv/backups

umask 077
printf 'sftp %s\n' "$(cut -d ' ' -f 1,2 "$key.pub")" > "$KEEP/known_hosts"
publish "$KEEP/known_hosts" known_hosts
publish "$password_file" password

exec /usr/sbin/sshd -D -e -f /etc/ssh/watcher/sshd_config -o HostKey="$key"
