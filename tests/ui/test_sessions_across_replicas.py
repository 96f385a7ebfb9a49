"""Dashboard sessions on two replicas of one deployment (one PostgreSQL, one audit key): a session signed in
on one replica works on the other, and signing out on one ends it on both. Before, a sign-out was
remembered only by the replica that answered it, so a copied cookie still opened every other replica's
dashboard until it expired (8 hours)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import FAST_GATEWAY_YAML
from tests.ui.test_dashboard import _csrf, sign_in

pytestmark = pytest.mark.postgres

LOCAL = {"deployments": [{"id": "local", "model": "local/extractive"}]}


def test_a_sign_out_on_one_replica_ends_the_session_on_every_replica(
    make_project: ProjectFactory,
    start_gateway: GatewayFactory,
    new_pg_database: Callable[[], str],
) -> None:
    project = make_project(routers={"known": LOCAL}, files={"config/gateway.yaml": FAST_GATEWAY_YAML})
    url = new_pg_database()
    shared = {"OPSGATE_AUDIT_KEY": secrets.token_hex(32)}  # replicas share the audit key (docs/operations.md)
    first = start_gateway(project, database_url=url, env=shared)
    second = start_gateway(project, database_url=url, env=shared, admin_key=first.admin_key)
    with first.http() as one:
        assert sign_in(one, first.admin_key).status_code == 303
        cookie = one.cookies["opsgate_ui"]
        with second.http(cookies={"opsgate_ui": cookie}) as other:
            assert other.get("/ui/approvals").status_code == 200  # the session holds on the other replica
        page = one.get("/ui/approvals")
        assert page.status_code == 200
        out = one.post("/ui/logout", data={"csrf": _csrf(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    with second.http(cookies={"opsgate_ui": cookie}) as other:
        after = other.get("/ui/approvals")
        assert after.status_code == 303 and after.headers["location"].startswith("/ui/login")
    with first.http(cookies={"opsgate_ui": cookie}) as replay:
        assert replay.get("/ui/approvals").status_code == 303
