"""deploy/compose.yaml and deploy/Dockerfile run the topology deploy/topology.sh runs (which
tests/deploy/test_topology.py tests), with the same settings: the same replica environment file, the
same nginx config and upstream parameters, the same serve command, the same Redis persistence.
Docker has no engine on the test machines, so the image is never built here: the manifests are checked
as files, and by `docker compose config` when a compose client is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.registry import audit
from gateway.settings import Settings
from tests.fakes.gateway import REPO

DEPLOY = REPO / "deploy"
SERVE = ["opsgate", "serve", "--host", "0.0.0.0", "--port", "8080"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return data


def gateways(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if re.fullmatch(r"gateway-\d+", name)}


def test_compose_replicas_run_the_topologys_environment_and_data_dirs(compose: dict[str, Any]) -> None:
    replicas = gateways(compose)
    assert len(replicas) >= 2
    volumes = set()
    for svc in replicas.values():
        assert svc["env_file"] == "gateway.env"  # the file deploy/topology.sh gives its replicas
        assert svc["image"] == "opsgate:latest" and "command" not in svc  # the image's CMD: SERVE
        (volume,) = svc["volumes"]
        assert volume.endswith(":/var/lib/opsgate")
        volumes.add(volume)
    assert len(volumes) == len(replicas)  # a data dir (request-log spool) each
    assert '"$DEPLOY/gateway.env"' in (DEPLOY / "topology.sh").read_text()  # the topology's replica_env


def test_gateway_env_names_only_real_settings() -> None:
    fields = {f"OPSGATE_{name.upper()}" for name in Settings.model_fields}
    fields.add(audit.KEY_ENV)  # read where the chain is keyed (gateway/registry/audit.py), CLI included
    for line in (DEPLOY / "gateway.env").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert value and " " not in value, line  # one word: topology.sh passes it to env -i
            assert not key.startswith("OPSGATE_") or key in fields, f"{key} is not a setting"


def test_nginx_is_the_shared_config_with_one_server_line_per_replica(compose: dict[str, Any]) -> None:
    mounts = dict(m.split(":")[:2] for m in compose["services"]["nginx"]["volumes"])
    assert mounts["./nginx/opsgate.conf"] == "/etc/nginx/conf.d/default.conf"
    assert mounts["./nginx/compose/opsgate-upstreams.conf"] == "/etc/nginx/opsgate-upstreams.conf"
    assert mounts["./nginx/compose/opsgate-listen.conf"] == "/etc/nginx/opsgate-listen.conf"
    upstreams = (DEPLOY / "nginx" / "compose" / "opsgate-upstreams.conf").read_text(encoding="utf-8")
    blocks = dict(re.findall(r"upstream (\w+) \{(.*?)\}", upstreams, re.S))
    assert set(blocks) == {"opsgate", "opsgate_reads"}
    for block in blocks.values():
        servers = re.findall(r"server (gateway-\d+):8080", block)
        assert sorted(servers) == sorted(gateways(compose))
    assert "include $DEPLOY/nginx/opsgate.conf" in (DEPLOY / "topology.sh").read_text()


def test_the_image_serves_as_the_topology_does() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in dockerfile  # the CPU build
    assert re.search(r"^USER opsgate$", dockerfile, re.M)  # not root
    (cmd,) = re.findall(r"^CMD (.*)$", dockerfile, re.M)
    assert yaml.safe_load(cmd) == SERVE
    assert "serve \\\n    --host 0.0.0.0 --port 8080" in (DEPLOY / "topology.sh").read_text()
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (REPO / source).exists(), source


def test_redis_keeps_its_counters_in_both(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "--appendonly yes" in (DEPLOY / "topology.sh").read_text()


def test_compose_client_accepts_the_file(tmp_path: Path) -> None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        args, folder = ["docker", "compose"], DEPLOY
    elif shutil.which("docker-compose"):
        # compose v1 (Debian's docker-compose) predates the top-level `name`: check the rest
        folder = tmp_path / "deploy"
        shutil.copytree(DEPLOY, folder)
        text = (folder / "compose.yaml").read_text(encoding="utf-8")
        (folder / "compose.yaml").write_text(re.sub(r"^name: .*\n", "", text, flags=re.M), encoding="utf-8")
        args = ["docker-compose"]
    else:
        pytest.fail(
            "no compose client: run 'sudo apt-get install -y docker-compose' (`make test` does it where it can)"
        )
    result = subprocess.run(
        [*args, "-f", str(folder / "compose.yaml"), "config", "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
