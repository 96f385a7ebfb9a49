"""Attack: a router deployment's allowed header carries a line break (`X-Title: "a\\r\\nAuthorization: ..."`)
to add a header the operator never allowed.

Both HTTP clients refuse such a value, so no header was injected; but only the header's name was
checked: `opsgate sync` registered the router and every call to it failed with a 500 (the client's
ValueError). A value with a line break or another control character is now refused by `opsgate sync`
at its line, and a version registered before is stopped before the call (502 `egress_denied`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from gateway.routing.spec import RouterSpec
from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.gateway import GatewayProcess, assert_error
from tests.fakes.upstream import FakeUpstream
from tests.security.egress_fakes import (
    MESSAGES,
    Listener,
    assert_no_leak,
    attacker,
    fake_anthropic,
    gateway_yaml,
    git_gateway,
    line_of,
    register_unchecked,
    routers,
    sync,
)

__all__ = ["attacker", "fake_anthropic"]  # fixtures

INJECTED = "opsgate\r\nAuthorization: Bearer sk-attacker"


@pytest.fixture(scope="module")
def gw(
    project_factory: ProjectFactory,
    gateway_factory: GatewayFactory,
    fake_upstream: FakeUpstream,
    fake_anthropic: Listener,
) -> Iterator[GatewayProcess]:
    config = gateway_yaml(fake_anthropic, fake_upstream)
    with git_gateway(
        project_factory, gateway_factory, routers(fake_anthropic, fake_upstream), config
    ) as gateway:
        yield gateway


def deployment(fake_upstream: FakeUpstream) -> dict[str, object]:
    return {
        "id": "d",
        "model": "openai/fake",
        "api_base": fake_upstream.url("ok-hdr"),
        "headers": {"X-Title": INJECTED},
    }


def test_sync_refuses_a_header_value_with_a_line_break(
    gw: GatewayProcess, fake_upstream: FakeUpstream
) -> None:
    text = yaml.safe_dump({"name": "crlf", "deployments": [deployment(fake_upstream)]}, sort_keys=False)
    done = sync(gw, {"config/routers/crlf.yaml": text}, "a header with a line break")
    try:
        assert done.returncode == 1, done.stdout + done.stderr
        line = line_of(text, "X-Title")
        expected = f"config/routers/crlf.yaml:{line}: deployments.0.headers.X-Title: the header's value holds a line break"
        assert expected in done.stderr, done.stderr
        assert "router:crlf" not in done.stdout
    finally:
        sync(gw, {"config/routers/crlf.yaml": ""}, "remove it")


def test_a_version_registered_before_is_stopped_before_the_call(
    gw: GatewayProcess, fake_upstream: FakeUpstream, attacker: Listener
) -> None:
    register_unchecked(
        gw,
        "router",
        RouterSpec.model_validate({"name": "old_crlf", "deployments": [deployment(fake_upstream)]}),
    )
    fake_upstream.clear()
    import time

    deadline = time.monotonic() + 10
    while True:
        with gw.http() as http:
            r = http.post(
                "/v1/chat/completions", json={"model": "old_crlf", "messages": MESSAGES}, headers=gw.auth()
            )
        if r.status_code != 404 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert_error(gw, r, 502, type_="upstream_error", code="egress_denied")
    assert "headers.X-Title: " in r.json()["error"]["message"]
    assert fake_upstream.hits("ok-hdr") == []
    assert_no_leak(gw, attacker, r.text)
