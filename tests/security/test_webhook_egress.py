"""Attack: alerts (drift, online evals, ML retrain notices) posted to a host nobody allowed.

On the code before this check, any `alerts.webhooks[].url` was posted to, whatever the host. Webhooks
now post only to hosts on `egress.webhook_hosts`: a gateway whose config names another host refuses to
start (file, line, field), and delivery checks again, so an unlisted host is never contacted.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ProjectFactory
from tests.fakes.gateway import OPSGATE, free_port, subprocess_env
from tests.security.egress_fakes import CANARIES, CANARY_ENV, Listener, attacker, line_of

__all__ = ["attacker"]  # fixtures


def serve(project_factory: ProjectFactory, config: str, tmp_data: str) -> subprocess.CompletedProcess[str]:
    project = project_factory(files={"config/gateway.yaml": config})
    env = subprocess_env({"OPSGATE_PROJECT_DIR": str(project), "OPSGATE_DATA_DIR": tmp_data, **CANARY_ENV})
    return subprocess.run(
        [OPSGATE, "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{attacker}/hook",
        "http://127.0.0.1:{allowed}@127.0.0.1:{attacker}/hook",
        "http://2130706433:{attacker}/hook",
    ],
    ids=["unlisted", "userinfo", "decimal-ip"],
)
def test_a_gateway_with_a_webhook_to_an_unlisted_host_does_not_start(
    project_factory: ProjectFactory, attacker: Listener, tmp_path: Path, url: str
) -> None:
    allowed = free_port()
    hook = url.format(attacker=attacker.port, allowed=allowed)
    config = (
        "alerts:\n  webhooks:\n"
        f"    - {{url: '{hook}', secret_env: ANTHROPIC_API_KEY, retries: 0}}\n"
        f"egress:\n  webhook_hosts: ['127.0.0.1:{allowed}']\n"
    )
    done = serve(project_factory, config, str(tmp_path))
    assert done.returncode == 2, done.stderr
    line = line_of(config, "- {url:")
    assert f"config/gateway.yaml:{line}: alerts.webhooks.0.url: " in done.stderr
    assert "egress.webhook_hosts" in done.stderr or "plain http(s) URL" in done.stderr
    assert "Traceback" not in done.stderr
    assert attacker.received == []
    for canary in CANARIES:
        assert canary not in done.stderr + done.stdout


def test_delivery_checks_the_host_again(attacker: Listener) -> None:
    """Alerts built with rules that do not list the host (a CLI or another caller): nothing is sent."""
    from gateway.egress import Egress, EgressConfig
    from gateway.monitoring.alerts import Alerts, AlertsConfig, WebhookConfig

    hooks = AlertsConfig(
        webhooks=[WebhookConfig(url=attacker.url + "/hook", secret_env="ANTHROPIC_API_KEY", retries=0)]
    )
    alerts = Alerts(hooks, Egress(EgressConfig(webhook_hosts=["127.0.0.1:1"])))
    asyncio.run(alerts.send("drift", {"model": "churn", "score": 0.9}))
    assert alerts.stats.failed == 1 and alerts.stats.sent == 0
    assert attacker.received == []
    receiver = Listener().start()  # the control: a listed host is posted to
    try:
        to_receiver = AlertsConfig(webhooks=[WebhookConfig(url=receiver.url + "/hook", retries=0)])
        listed = Alerts(to_receiver, Egress(EgressConfig(webhook_hosts=[f"127.0.0.1:{receiver.port}"])))
        asyncio.run(listed.send("drift", {"model": "churn", "score": 0.9}))
        assert listed.stats.sent == 1 and len(receiver.received) == 1
    finally:
        receiver.stop()
    assert attacker.received == []
