"""Attack: alert rules (config/alerts.yaml, an author's governed file) name a receiver the operator never
allowed, or a secret the operator never meant for webhooks.

Before the fix a receiver's `url` was checked only when a notice was delivered, its `secret_env` never:
`opsgate sync` registered receivers to any host and HMAC keys read from any variable (`DATABASE_URL`,
`OPSGATE_*`), `opsgate serve` started on them, and a delivery signed its payload with the named variable
(the receiver gets HMAC(secret, known payload): a guessing oracle on a database password). And the
start-up read of config/alerts.yaml followed a link. Now the receivers' hosts (`egress.webhook_hosts`)
and variables (`egress.webhook_secret_envs`, default `*_HMAC_SECRET`, `*_WEBHOOK_SECRET`,
`*_ALERT_SECRET`) are checked by `opsgate sync` and at start (one line per problem: file, line, field)
and again before each delivery; the file is read like every file an author commits.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import OPSGATE, free_port, subprocess_env
from tests.security.egress_fakes import (
    CANARIES,
    CANARY_ENV,
    Listener,
    attacker,
    git_commit_all,
    line_of,
    sync,
)

__all__ = ["attacker"]  # fixtures


def gateway_config(receiver: Listener) -> str:
    return f"egress:\n  webhook_hosts: ['127.0.0.1:{receiver.port}']\n"


def alerts(attacker: Listener, receiver: Listener) -> str:
    return (
        "receivers:\n"
        f"  oncall: {{url: '{receiver.url}/hook', secret_env: ONCALL_HMAC_SECRET, retries: 0}}\n"
        f"  exfil: {{url: '{attacker.url}/hook', retries: 0}}\n"
        f"  leaky: {{url: '{receiver.url}/hook', secret_env: DATABASE_URL, retries: 0}}\n"
        "rules:\n"
        "  - {name: busy, metric: requests, threshold: 0, receivers: [oncall, exfil, leaky]}\n"
    )


def serve(project: Path, data: Path) -> subprocess.CompletedProcess[str]:
    env = subprocess_env({"OPSGATE_PROJECT_DIR": str(project), "OPSGATE_DATA_DIR": str(data), **CANARY_ENV})
    return subprocess.run(
        [OPSGATE, "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_refuses_receivers_the_operator_did_not_allow(
    project_factory: ProjectFactory, attacker: Listener, tmp_path: Path
) -> None:
    receiver = Listener().start()
    try:
        text = alerts(attacker, receiver)
        project = project_factory(
            files={"config/gateway.yaml": gateway_config(receiver), "config/alerts.yaml": text}
        )
        done = serve(project, tmp_path / "data")
        assert done.returncode == 2, done.stderr
        line = line_of(text, "exfil:")
        assert f"config/alerts.yaml:{line}: receivers.exfil.url: alerts may not be sent to" in done.stderr
        assert "Traceback" not in done.stderr
        # the file as a link (to a copy outside the project): refused, never read through
        outside = tmp_path / "alerts.yaml"
        outside.write_text(text.replace(f"{attacker.url}", receiver.url), encoding="utf-8")
        (project / "config" / "alerts.yaml").unlink()
        os.symlink(outside, project / "config" / "alerts.yaml")
        done = serve(project, tmp_path / "data2")
        assert done.returncode == 2, done.stderr
        assert "config/alerts.yaml: is a symbolic link" in done.stderr
        # config/policies.yaml likewise (read at start until a policy version is at production)
        (project / "config" / "alerts.yaml").unlink()
        policies = tmp_path / "policies.yaml"
        policies.write_text("rules: []\n", encoding="utf-8")
        (project / "config" / "policies.yaml").unlink(missing_ok=True)
        os.symlink(policies, project / "config" / "policies.yaml")
        done = serve(project, tmp_path / "data3")
        assert done.returncode == 2, done.stderr
        assert "config/policies.yaml: is a symbolic link" in done.stderr
    finally:
        receiver.stop()
    assert attacker.received == [] and receiver.received == []
    for canary in CANARIES:
        assert canary not in done.stderr + done.stdout


def test_sync_refuses_receivers_the_operator_did_not_allow(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, attacker: Listener
) -> None:
    receiver = Listener().start()
    try:
        project = project_factory(files={"config/gateway.yaml": gateway_config(receiver)})
        git_commit_all(project, "project")
        with gateway_factory(project, env=CANARY_ENV) as gw:

            def versions() -> int:
                items = json.loads(gw.cli("list", "alert", "--json").stdout)
                return sum(int(i["versions"]) for i in items if i["name"] == "alerts")

            before = versions()
            text = alerts(attacker, receiver)
            for name, words in (
                ("exfil", "url: alerts may not be sent to"),
                ("leaky", "secret_env: the environment variable DATABASE_URL is not one an alert receiver"),
            ):
                one = "\n".join(ln for ln in text.splitlines() if ln.strip().startswith(("receivers", name)))
                one += f"\nrules:\n  - {{name: busy, metric: requests, threshold: 0, receivers: [{name}]}}\n"
                done = sync(gw, {"config/alerts.yaml": one}, f"alert rules to {name}")
                assert done.returncode == 1, done.stdout + done.stderr
                where = f"config/alerts.yaml:{line_of(one, name + ':')}: receivers.{name}.{words}"
                assert where in done.stderr, done.stderr
                assert versions() == before  # nothing registered
            good = (
                f"receivers:\n  oncall: {{url: '{receiver.url}/hook', secret_env: ONCALL_HMAC_SECRET}}\n"
                "rules:\n  - {name: busy, metric: requests, threshold: 0, receivers: [oncall]}\n"
            )
            done = sync(gw, {"config/alerts.yaml": good}, "fixed")
            assert done.returncode == 0, done.stdout + done.stderr
            assert versions() == before + 1
    finally:
        receiver.stop()
    assert attacker.received == []


def test_delivery_checks_the_receiver_again(attacker: Listener) -> None:
    """Rules registered before the check (or under other egress rules): nothing is sent, no variable read."""
    from gateway.egress import Egress, EgressConfig
    from gateway.monitoring.alerting import AlertEngine
    from gateway.monitoring.alertrules import AlertsSpec

    receiver = Listener().start()
    try:
        spec = AlertsSpec.model_validate(
            {
                "receivers": {
                    "exfil": {"url": attacker.url + "/hook", "retries": 0},
                    "leaky": {"url": receiver.url + "/hook", "secret_env": "DATABASE_URL", "retries": 0},
                    "oncall": {"url": receiver.url + "/hook", "secret_env": "ONCALL_HMAC_SECRET"},
                },
            }
        )
        engine = AlertEngine(
            None,  # type: ignore[arg-type]  # delivery alone needs no database
            spec,
            Egress(EgressConfig(webhook_hosts=[f"127.0.0.1:{receiver.port}"])),
        )

        async def post(name: str) -> str | None:
            notice: Any = SimpleNamespace(
                id=1, receiver=name, payload={"id": "a1", "event": "firing", "rule": "busy"}
            )
            import aiohttp

            async with aiohttp.ClientSession() as http:
                return await engine._post(http, spec, notice)

        exfil = asyncio.run(post("exfil"))
        leaky = asyncio.run(post("leaky"))
        assert exfil is not None and "url: alerts may not be sent" in exfil
        assert leaky is not None and "secret_env: the environment variable DATABASE_URL" in leaky
        assert receiver.received == []
        assert asyncio.run(post("oncall")) is None  # the control: an allowed receiver and variable
        assert len(receiver.received) == 1
    finally:
        receiver.stop()
    assert attacker.received == []
