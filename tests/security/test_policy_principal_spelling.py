"""Issue 11 (principals) retried on policy rules: keys hold principals normalised (case folded, invisible
characters removed, `Name <email>` reduced to the email), but a rule's `match.principals` patterns were
compared as written, so a block rule for `Mallory@Example.com` (or `Mallory <mallory@example.com>`)
never applied to the key of `mallory@example.com`. Patterns are now normalised like principals. Real
gateway, real upstream, the official openai client.
"""

from __future__ import annotations

import openai
import pytest

from tests.conftest import GatewayFactory, ProjectFactory
from tests.fakes.upstream import FakeUpstream
from tests.policy.conftest import routers
from tests.security.test_governance_rules_governed import new_key

POLICIES = """\
rules:
  - name: mallory
    match: {principals: ["Mallory@Example.com", "Eve <EVE@example.com>"]}
    checks:
      - {type: deny_list, terms: [forbidden-word]}
"""


def test_a_rule_naming_a_principal_in_another_spelling_applies(
    make_project: ProjectFactory, start_gateway: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    gw = start_gateway(make_project(routers(fake_upstream), files={"config/policies.yaml": POLICIES}))
    body = {"model": "echo", "messages": [{"role": "user", "content": "say forbidden-word"}], "max_tokens": 5}
    for principal in ("mallory@example.com", "eve@example.com"):
        key = new_key(gw, principal, ["app"])
        with pytest.raises(openai.BadRequestError):
            gw.client(api_key=key).chat.completions.create(**body)
    other = new_key(gw, "carol@example.com", ["app"])
    assert gw.client(api_key=other).chat.completions.create(**body).choices
