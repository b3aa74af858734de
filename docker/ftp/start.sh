#!/bin/sh
# The `ftp` service: vsftpd with tests/servers/vsftpd/vsftpd.conf, the very file the tests' fixture
# starts vsftpd with (explicit TLS required, require_ssl_reuse=YES, passive ports 30000-30009). At first
# start it makes a small certificate authority and, signed by it, the server's certificate for the name
# `ftp`; at every start it publishes the authority's certificate and the account password to the watcher,
# which verifies the server against that authority (BACKUP_TARGET_2_TLS_CA_FILE).
set -eu
. /usr/local/lib/watcher/secrets.sh

if [ ! -s "$KEEP/server.pem" ]; then
    umask 077
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -subj "/CN=watcher stack FTPS authority" -keyout "$KEEP/ca.key" -out "$KEEP/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=ftp" \
        -keyout "$KEEP/server.key" -out "$KEEP/server.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:ftp" > "$KEEP/server.ext"
    openssl x509 -req -in "$KEEP/server.csr" -CA "$KEEP/ca.pem" -CAkey "$KEEP/ca.key" -CAcreateserial \
        -days 3650 -extfile "$KEEP/server.ext" -out "$KEEP/server.pem.new" 2>/dev/null
    rm -f "$KEEP/server.csr" "$KEEP/server.ext"
    mv "$KEEP/server.pem.new" "$KEEP/server.pem"
    echo "ftp: made a new certificate: $(openssl x509 -in "$KEEP/server.pem" -noout -fingerprint -sha256)" >&2
fi
password_file=$(account_password ftp "${FTP_PASSWORD:-}")
ACCOUNT_UID=$FTP_ACCOUNT_UID sh /usr/local/lib/watcher/ftp_user.sh "$password_file"
install -d -m 0700 -o watcher-ftp -g watcher-ftp /srv/backups

publish "$KEEP/ca.pem" ca.pem
publish "$password_file" password

exec /usr/sbin/vsftpd /etc/vsftpd/watcher/vsftpd.conf \
    -orsa_cert_file="$KEEP/server.pem" -orsa_private_key_file="$KEEP/server.key" \
    -ovsftpd_log_file=/proc/1/fd/1 -odebug_ssl=NO
