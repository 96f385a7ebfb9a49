"""Issue 11, finding 12 (admin inputs): a 20-digit integer on an admin path or query overflowed the database
integer and a NUL character in an admin write was refused by PostgreSQL, each a 500. They now get a 400
naming the field, and nothing is written. Real gateway on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess

PROMPT = "name: hello\nmessages:\n  - {role: system, content: Hi.}\n"
BIG = "9" * 20


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory, gateway_factory: GatewayFactory, new_pg_database: Callable[[], str]
) -> GatewayProcess:
    project = project_factory(files={"prompts/hello.yaml": PROMPT})
    return gateway_factory(project, database_url=new_pg_database())


@pytest.mark.parametrize(
    ("path", "param"),
    [
        (f"/admin/artifacts/prompt/hello/versions/{BIG}", "selector"),
        (f"/admin/audit?after={BIG}", "after"),
        (f"/admin/audit?after=-{BIG}", "after"),
        ("/admin/promotions?state=pend%00ing", "state"),
        ("/admin/promotions/prm_%00x", "promotion_id"),
        ("/admin/artifacts/prompt/hel%00lo", "name"),
    ],
)
def test_bad_paths_and_queries_get_a_400_naming_the_field(gw: GatewayProcess, path: str, param: str) -> None:
    with gw.http() as http:
        r = http.get(path, headers=gw.auth())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/admin/keys", {"name": "a\u0000b", "roles": ["app"]}, "name"),
        ("/admin/keys", {"name": "ok", "roles": ["app"], "principal": "x\u0000"}, "principal"),
        ("/admin/keys", {"name": "ok", "roles": ["app"], "allow": ["prompt:\u0000"]}, "allow.0"),
        ("/admin/promotions", {"ref": "prompt:hello@1", "to": "canary", "reason": "\u0000"}, "reason"),
        ("/admin/promotions", {"ref": f"prompt:hello@{BIG}", "to": "canary"}, "ref"),
        ("/admin/rollback", {"ref": "prompt:hello", "to_version": int(BIG), "reason": "x"}, "to_version"),
    ],
)
def test_bad_writes_get_a_400_naming_the_field_and_write_nothing(
    gw: GatewayProcess, path: str, body: dict[str, object], param: str
) -> None:
    with gw.http() as http:
        before = len(http.get("/admin/audit?limit=1000", headers=gw.auth()).json())
        r = http.post(path, json=body, headers=gw.auth())
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        assert len(http.get("/admin/audit?limit=1000", headers=gw.auth()).json()) == before
