"""Serving governed prompts by reference through the real gateway and the official openai client."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.gateway import GatewayProcess
from tests.registry.conftest import BOB, SUPPORT_QA, GitProject


def _key(gw: GatewayProcess, name: str, role: str, principal: str) -> str:
    out = gw.cli(
        "keys", "create", "--name", name, "--role", role, "--principal", principal, key=gw.admin_key
    ).stdout
    key = out.strip().splitlines()[-1]
    gw.wait_for_key(key)  # the running gateway picks new keys up within its refresh interval
    return key


@pytest.fixture
def served(
    git_project: Callable[..., GitProject],
    start_gateway: Callable[..., GatewayProcess],
    db_url: str,
    new_pg_database: Callable[[], str],
) -> Iterator[tuple[GitProject, GatewayProcess, dict[str, str]]]:
    """A fresh install serving prompt:support_qa@1 (bootstrapped to production); keys for three people."""
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    url = new_pg_database() if db_url.startswith("postgresql") else None
    gw = start_gateway(project.path, database_url=url)
    keys = {
        "alice": _key(gw, "alice", "prompt-engineer", "alice@example.com"),
        "bob": _key(gw, "bob", "approver", "bob@example.com"),
        "app": _key(gw, "app", "app", "checkout"),
    }
    yield project, gw, keys


def _ask(client: openai.OpenAI, model: str, **extra: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "Does Acme support single sign-on?"}],
        extra_body={"prompt_variables": {"product": "Acme"}, **extra},
    )


def test_prompt_by_name_version_and_alias_with_stamped_log_rows(
    served: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _project, gw, keys = served
    client = gw.client(api_key=keys["app"])
    for model in ("support_qa", "prompt:support_qa", "prompt:support_qa@1", "prompt:support_qa@production"):
        raw = _ask(client, model)
        answer = raw.parse().choices[0].message.content
        assert "Acme supports single sign-on through SAML and OIDC." in answer and "[handbook-1]" in answer
        versions = raw.headers["x-opsgate-versions"].split(",")
        assert versions[0].startswith("prompt:support_qa@1#") and versions[1].startswith("router:default@1#")
        row = gw.log_row(raw.headers["x-opsgate-request-id"])
        assert row["artifacts"] == versions and row["model"] == model and row["status"] == 200

    # LiteLLM's addressing: prompt_id + prompt_version + prompt_variables
    raw = client.chat.completions.with_raw_response.create(
        model="anything",
        messages=[{"role": "user", "content": "How much does it cost?"}],
        extra_body={"prompt_id": "support_qa", "prompt_version": 1, "prompt_variables": {"product": "Acme"}},
    )
    assert "10 dollars" in raw.parse().choices[0].message.content
    assert raw.headers["x-opsgate-versions"].startswith("prompt:support_qa@1#")


def test_prompt_variables_are_validated_against_the_schema(
    served: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _, gw, keys = served
    client = gw.client(api_key=keys["app"])
    with pytest.raises(openai.BadRequestError) as missing:
        client.chat.completions.create(model="support_qa", messages=[{"role": "user", "content": "hi"}])
    body = missing.value.body
    assert isinstance(body, dict)
    assert body["param"] == "prompt_variables.product" and "'product' is required" in body["message"]
    with pytest.raises(openai.BadRequestError) as wrong_type:
        client.chat.completions.create(
            model="support_qa",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"prompt_variables": {"product": 42}},
        )
    assert (
        isinstance(wrong_type.value.body, dict)
        and wrong_type.value.body["param"] == "prompt_variables.product"
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="prompt:support_qa@staging",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"prompt_variables": {"product": "Acme"}},
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="prompt:support_qa@9",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"prompt_variables": {"product": "Acme"}},
        )


def test_promotion_through_the_cli_reaches_the_running_gateway_within_a_second(
    served: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    project, gw, keys = served
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("SAML and OIDC", "SAML only"))
    project.commit("SSO wording", author=BOB)
    assert "registered prompt:support_qa@2" in gw.cli("sync", key=keys["alice"]).stdout

    # Nobody can move production around a promotion: not the author, not an app key, not a refusal path.
    refused = gw.cli("approve", "prm_nope", key=keys["bob"], check=False)
    assert refused.returncode != 0 and "no promotion" in refused.stderr
    no_role = gw.cli("promote", "prompt:support_qa@2", "--to", "production", key=keys["app"], check=False)
    assert no_role.returncode != 0 and "needs the role" in no_role.stderr

    promotion_id = (
        gw.cli("promote", "prompt:support_qa@2", "--to", "production", key=keys["alice"])
        .stdout.strip()
        .splitlines()[-1]
    )
    assert promotion_id.startswith("prm_")
    own = gw.cli("approve", promotion_id, key=keys["bob"], check=False)  # Bob wrote commit 2: four-eyes
    assert own.returncode != 0 and "four-eyes" in own.stderr

    admin_approval = gw.cli("approve", promotion_id, key=gw.admin_key)
    moved_at = time.monotonic()
    assert "applied" in admin_approval.stdout
    client = gw.client(api_key=keys["app"])
    while True:
        raw = _ask(client, "support_qa")
        if raw.headers["x-opsgate-versions"].startswith("prompt:support_qa@2#"):
            break
        assert time.monotonic() - moved_at < 1.0, "the alias move did not reach the gateway within 1 s"
        time.sleep(0.02)
    assert "SAML only" in raw.parse().choices[0].message.content

    rollback_id = (
        gw.cli(
            "rollback",
            "prompt:support_qa",
            "--to",
            "1",
            "--reason",
            "wording regressed",
            "--emergency",
            key=gw.admin_key,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert rollback_id.startswith("prm_")
    deadline = time.monotonic() + 1.0
    while not _ask(client, "support_qa").headers["x-opsgate-versions"].startswith("prompt:support_qa@1#"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert gw.cli("audit", "verify").returncode == 0


def test_admin_api_lists_promotes_and_checks_roles(
    served: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    project, gw, keys = served
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("10", "12"))
    project.commit("price")
    with gw.http() as http:
        assert http.get("/admin/artifacts", headers=gw.auth(keys["app"])).status_code == 403
        assert http.get("/admin/artifacts").status_code == 401
        synced = http.post("/admin/sync", json={}, headers=gw.auth(keys["alice"]))
        assert synced.status_code == 200 and synced.json()["registered"][0].startswith("prompt:support_qa@2#")
        arts = {
            (a["kind"], a["name"]): a
            for a in http.get("/admin/artifacts", headers=gw.auth(keys["alice"])).json()
        }
        assert arts[("prompt", "support_qa")]["aliases"] == {"latest": 2, "production": 1}
        version = http.get(
            "/admin/artifacts/prompt/support_qa/versions/2", headers=gw.auth(keys["bob"])
        ).json()
        assert version["git_message"] == "price" and version["aliases"] == ["latest"]
        diff = http.get(
            "/admin/diff",
            params={"a": "prompt:support_qa@1", "b": "prompt:support_qa@2"},
            headers=gw.auth(keys["bob"]),
        ).json()
        assert (
            '-      [handbook-2] {{ product }} costs {{ price | default("10") }}' in diff["diff"]
            or "10" in diff["diff"]
        )

        bad = http.post(
            "/admin/promotions",
            json={"ref": "prompt:support_qa", "to": "production"},
            headers=gw.auth(keys["alice"]),
        )
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "ref"
        created = http.post(
            "/admin/promotions",
            json={"ref": "prompt:support_qa@2", "to": "production", "reason": "new price"},
            headers=gw.auth(keys["alice"]),
        )
        assert created.status_code == 201 and created.json()["state"] == "pending"
        pid = created.json()["id"]
        dup = http.post(
            "/admin/promotions",
            json={"ref": "prompt:support_qa@2", "to": "production"},
            headers=gw.auth(keys["alice"]),
        )
        assert dup.status_code == 409 and dup.json()["error"]["code"] == "promotion_pending"
        selfish = http.post(f"/admin/promotions/{pid}/approve", json={}, headers=gw.auth(keys["alice"]))
        assert selfish.status_code == 403
        approved = http.post(
            f"/admin/promotions/{pid}/approve", json={"comment": "ok"}, headers=gw.auth(keys["bob"])
        )
        assert approved.status_code == 200 and approved.json()["state"] == "applied"
        audit_rows = http.get("/admin/audit", headers=gw.auth(keys["bob"])).json()
        assert audit_rows[-1]["action"] == "alias.promote" and audit_rows[-1]["after"] == {"version": 2}
        assert http.get("/admin/audit/verify", headers=gw.auth(keys["bob"])).json()["ok"] is True
        schema = http.get("/openapi.json").json()
        assert "/admin/promotions/{promotion_id}/approve" in schema["paths"]


def test_models_lists_prompts_and_routers_the_key_may_call(
    served: tuple[GitProject, GatewayProcess, dict[str, str]],
) -> None:
    _, gw, _ = served
    limited = (
        gw.cli(
            "keys",
            "create",
            "--name",
            "only-qa",
            "--role",
            "app",
            "--allow",
            "prompt:support_qa",
            key=gw.admin_key,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    gw.wait_for_key(limited)
    ids = {m.id: m for m in gw.client(api_key=limited).models.list()}
    assert set(ids) == {"support_qa"}
    # the prompt runs on its router without the key being allowed the router itself...
    answer = gw.client(api_key=limited).chat.completions.create(
        model="support_qa",
        messages=[{"role": "user", "content": "Does Acme support single sign-on?"}],
        extra_body={"prompt_variables": {"product": "Acme"}},
    )
    assert "SAML" in (answer.choices[0].message.content or "")
    # ...but the router on its own stays out of reach
    with pytest.raises(openai.PermissionDeniedError):
        gw.client(api_key=limited).chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}]
        )
    everything = {m.id for m in gw.client().models.list()}
    assert {"default", "minilm", "support_qa"} <= everything


def test_two_gateways_on_one_postgres_both_see_an_alias_move(
    git_project: Callable[..., GitProject],
    start_gateway: Callable[..., GatewayProcess],
    new_pg_database: Callable[[], str],
) -> None:
    project = git_project({"prompts/support_qa.yaml": SUPPORT_QA})
    url = new_pg_database()
    first = start_gateway(project.path, database_url=url)
    second = start_gateway(project.path, database_url=url)
    alice = _key(first, "alice", "prompt-engineer", "alice@example.com")
    project.write("prompts/support_qa.yaml", SUPPORT_QA.replace("10", "15"))
    project.commit("price 15", author=BOB)
    first.cli("sync", key=alice)
    pid = (
        first.cli("promote", "prompt:support_qa@2", "--to", "production", key=alice)
        .stdout.strip()
        .splitlines()[-1]
    )
    clients = {first.base_url: first.client(), second.base_url: second.client()}
    first.cli("approve", pid, key=first.admin_key)
    moved = time.monotonic()
    pending = set(clients)
    while pending:
        for url in sorted(pending):
            if (
                _ask(clients[url], "support_qa")
                .headers["x-opsgate-versions"]
                .startswith("prompt:support_qa@2#")
            ):
                pending.discard(url)
        if pending:
            assert time.monotonic() - moved < 1.0, f"not moved within 1 s on {pending}"
            time.sleep(0.02)
    with httpx.Client() as http:
        assert http.get(second.root_url + "/readyz").status_code == 200
