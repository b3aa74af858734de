# Sourced by the server containers' start scripts (docker/sftp/start.sh, docker/ftp/start.sh).
#
# Each server keeps what it makes at first start in its own volume (/var/lib/server: host key or
# certificate, account password) and publishes to the watcher, through a volume of its own that only
# it and the watcher mount (/run/watcher-public here; /run/watcher-secrets/<server> in the watcher,
# read-only), only what the watcher needs: the public key or certificate that it verifies the server
# against, and the account password. The watcher reads them as the uid it runs as (WATCHER_UID) and
# nobody else can: 0400, owned by that uid, in a folder only root writes. The server's login account has
# a uid of its own (ACCOUNT_UID), never the watcher's, so a client of the server cannot read or replace them.

KEEP=/var/lib/server
# The servers' login accounts: uids no WATCHER_UID will be (the watcher refuses them; README, Docker).
SFTP_ACCOUNT_UID=60022
FTP_ACCOUNT_UID=60021
SHARED=/run/watcher-public

# account_password NAME VALUE: VALUE when given (from .env), else the one kept, else a new random one;
# written to $KEEP/password (root only), and its path is printed.
account_password() {
    umask 077
    if [ -n "$2" ]; then
        printf '%s' "$2" > "$KEEP/password.new" && mv "$KEEP/password.new" "$KEEP/password"
    elif [ ! -s "$KEEP/password" ]; then
        # 32 letters and digits from the kernel's random source: about 190 bits.
        tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 32 > "$KEEP/password.new"
        mv "$KEEP/password.new" "$KEEP/password"
        echo "$1: made a new account password (published to the watcher; kept in this server's volume)" >&2
    fi
    echo "$KEEP/password"
}

# publish SOURCE NAME: copy SOURCE to the watcher's volume as NAME, readable by the watcher's uid only,
# replaced in one rename so that the watcher never reads half a file.
publish() {
    install -m 0400 -o "${WATCHER_UID:-1000}" "$1" "$SHARED/.$2.new"
    mv "$SHARED/.$2.new" "$SHARED/$2"
}
