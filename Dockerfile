# watcher's image. Debian's own Python on debian:bookworm-slim, so that security updates come from
# the distribution (rebuild to get them); the pinned requirements in a virtualenv made in a build
# stage, so the final image has neither a compiler nor pip's cache; a non-root user; tini as PID 1
# so that SIGTERM reaches the daemon and it ends its run cleanly (`docker compose stop`).
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/watcher
# The requirements alone first: their layer is rebuilt only when requirements.txt changes.
COPY requirements.txt /src/requirements.txt
RUN /opt/watcher/bin/pip install --no-cache-dir --disable-pip-version-check -r /src/requirements.txt
COPY pyproject.toml README.md LICENSE /src/
COPY watcher /src/watcher
# pip and setuptools have done their work: the final image runs the program, it installs nothing.
RUN /opt/watcher/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps /src \
 && /opt/watcher/bin/pip uninstall --yes --quiet pip setuptools

FROM debian:bookworm-slim
# The uid that reads ./data and owns what `restore` writes: match it to yours (WATCHER_UID in .env).
ARG WATCHER_UID=1000
# Not root, and not the uid of a bundled server's login account (docker/secrets.sh): the files the servers
# publish to the watcher are that uid's.
RUN case "$WATCHER_UID" in 0|60021|60022) echo "WATCHER_UID=$WATCHER_UID is reserved" >&2; exit 1;; esac \
 && apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid "$WATCHER_UID" --user-group --no-create-home --home-dir /var/lib/watcher \
      --shell /usr/sbin/nologin watcher \
 && install -d -o watcher -g watcher -m 0700 /var/lib/watcher /restore /run/watcher-repository
COPY --from=build /opt/watcher /opt/watcher
# The compose stack's one-shot `repository-password` service (docker-compose.yml) runs this, as the
# watcher's uid, into /run/watcher-repository: a new volume mounted there takes this folder's owner.
COPY docker/repository-password.sh /usr/local/lib/watcher/repository-password.sh
ENV PATH=/opt/watcher/bin:$PATH \
    BACKUP_STATE_DIR=/var/lib/watcher \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Caches, run logs, health, pending changes: keep it, or the next start rescans and re-reads the indexes.
VOLUME /var/lib/watcher
USER $WATCHER_UID
# Not the state folder: a .env in the working folder is read as configuration.
WORKDIR /
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=2 CMD ["watcher", "health"]
ENTRYPOINT ["tini", "--", "watcher"]
CMD ["run"]
