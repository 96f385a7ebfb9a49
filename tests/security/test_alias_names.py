"""Issue 11, finding 13 (aliases): `Production`, `production ` and `production` plus a zero-width space were
accepted as new, unprotected aliases and moved at once, looking like the protected one. One rule for alias
names (a lowercase letter, then up to 63 of [a-z0-9_-]) refuses them with a 400 naming the alias, in the
admin API and the CLI alike.
"""

from __future__ import annotations

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess

PROMPT = "name: hello\nmessages:\n  - {role: system, content: Hi.}\n"
LOOKALIKES = ["Production", "production ", "production\u200b", " production", "prod\u0443ction", "x" * 65, ""]


@pytest.fixture(scope="module")
def gw(project_factory: ProjectFactory, gateway_factory: GatewayFactory) -> GatewayProcess:
    return gateway_factory(project_factory(files={"prompts/hello.yaml": PROMPT}))


@pytest.mark.parametrize("alias", LOOKALIKES)
def test_lookalike_aliases_are_refused_by_the_admin_api(gw: GatewayProcess, alias: str) -> None:
    with gw.http() as http:
        r = http.post("/admin/promotions", json={"ref": "prompt:hello@1", "to": alias}, headers=gw.auth())
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "to" and repr(alias) in r.json()["error"]["message"]
        rb = http.post(
            "/admin/rollback",
            json={"ref": "prompt:hello", "to_version": 1, "alias": alias, "reason": "x", "emergency": True},
            headers=gw.auth(),
        )
        assert rb.status_code == 400, rb.text
        aliases = http.get("/admin/artifacts/prompt/hello", headers=gw.auth()).json()["aliases"]
    assert set(aliases) <= {"latest", "production"}


def test_lookalike_aliases_are_refused_by_the_cli(gw: GatewayProcess) -> None:
    done = gw.cli("promote", "prompt:hello@1", "--to", "Production", key=gw.admin_key, check=False)
    assert done.returncode != 0 and "'Production' is not a valid alias name" in done.stderr
    ok = gw.cli("promote", "prompt:hello@1", "--to", "canary", key=gw.admin_key, check=False)
    assert ok.returncode == 0, ok.stderr
