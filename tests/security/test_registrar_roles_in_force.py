"""Attack: widen who may register versions by committing a governance change nobody approved.

`governance.registrar_roles` (who may run `opsgate sync` and build indexes, as the CLI, the admin API's
`/admin/sync`, `opsgate index build` and `opsgate pipeline run`) was read from `config/gateway.yaml` as it
stands, while promotions follow the governance rules version at production. A prompt engineer commits
`registrar_roles: [prompt-engineer, admin, app]`: the change is synced as a governance version waiting for
an approval by a second admin, yet an application key could sync at once. Now registrar roles follow the
rules in force, like every other governance rule.
"""

from __future__ import annotations

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML, commit_project
from tests.security._ml import make_key

WIDENED = FAST_GATEWAY_YAML + "governance:\n  registrar_roles: [prompt-engineer, admin, app]\n"


def test_registrar_roles_follow_the_rules_in_force(
    make_project: ProjectFactory, start_gateway: GatewayFactory
) -> None:
    project = make_project(files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    commit_project(project, "installed")
    gw = start_gateway(project)  # the first start registers the committed rules: governance@1
    engineer = make_key(gw, "engineer", "prompt-engineer")
    app = make_key(gw, "app", "app")

    (project / "config" / "gateway.yaml").write_text(WIDENED, encoding="utf-8")
    commit_project(project, "let applications sync")
    synced = gw.cli("sync", key=engineer).stdout
    assert "governance:governance@2" in synced, synced

    refused = gw.cli("sync", key=app, check=False)
    assert refused.returncode != 0, refused.stdout
    assert "prompt-engineer" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
    gw.stop()  # the operator restarts the gateway: it now reads the committed file
    gw = start_gateway(project, database_url=gw.db_url())
    with gw.http(headers=gw.auth(app)) as http:
        r = http.post("/admin/sync", json={})
    assert r.status_code == 403, r.text
    assert "prompt-engineer" in r.json()["error"]["message"], r.text
