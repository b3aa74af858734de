#!/bin/sh
# The `repository-password` service: runs once before the watcher starts, as the watcher's uid, and
# leaves in the `repository-password` volume the password that encrypts the stack's repositories
# (BACKUP_REPOSITORY_PASSWORD_FILE of the watcher). That volume is mounted into this service and,
# read-only, into the watcher: never into the servers, which hold only what this password encrypts.
#
# - BACKUP_REPOSITORY_PASSWORD set (from .env): that password is written to the file;
# - otherwise the file kept from an earlier start stays as it is;
# - otherwise a new random one is made (32 letters and digits, about 190 bits), once.
# The password is never printed. A kept password that a different one from .env replaces is not
# deleted: it stays beside it as password.replaced-<UTC time>, for the repositories it may still open.
#
# Usage: repository-password.sh [FILE]   (default /run/watcher-repository/password)
set -eu
umask 077
export LC_ALL=C

file=${1:-/run/watcher-repository/password}
folder=$(dirname "$file")
new="$folder/.password.new"
say() { echo "repository-password: $*" >&2; }

if [ ! -d "$folder" ] || [ ! -w "$folder" ]; then
    say "cannot write to $folder (uid $(id -u)): is the repository-password volume mounted there?"
    exit 1
fi

# install FROM: FROM becomes the password file in one rename, readable by this uid only.
install_password() {
    chmod 0400 "$1"
    mv -f "$1" "$file"
}

if [ -n "${BACKUP_REPOSITORY_PASSWORD:-}" ]; then
    printf '%s' "$BACKUP_REPOSITORY_PASSWORD" > "$new"
    if [ -s "$file" ] && cmp -s "$new" "$file"; then
        rm -f "$new"
        say "BACKUP_REPOSITORY_PASSWORD from .env: the same as the one kept in $file"
        exit 0
    fi
    if [ -s "$file" ]; then
        kept="$file.replaced-$(date -u +%Y%m%dT%H%M%SZ)"
        cp -p "$file" "$kept"
        say "BACKUP_REPOSITORY_PASSWORD from .env differs from the password kept in $file:" \
            "the old one is kept as $kept (repositories made with it open only with it)"
    fi
    install_password "$new"
    say "BACKUP_REPOSITORY_PASSWORD from .env written to $file"
elif [ -s "$file" ]; then
    say "keeping the password in $file"
else
    tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32 > "$new"
    if [ "$(wc -c < "$new")" -ne 32 ]; then
        rm -f "$new"
        say "could not make a password from /dev/urandom"
        exit 1
    fi
    install_password "$new"
    say "made a new random password in $file (the repository-password volume)." \
        "LOSING IT LOSES THE BACKUPS: keep a copy away from this machine, printed with" \
        "\`docker compose exec watcher cat $file\` (README, \"Docker\")"
fi
