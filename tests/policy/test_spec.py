"""The policy file: typed with `type:` discriminators, errors naming file, line and field; content hash;
rules matched by key, principal, role, route and target globs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.policy.base import Subject
from gateway.policy.spec import CompiledMatch, Match, parse_policy, registered_checks

CHECKS = registered_checks()
GOOD = """\
rules:
  - name: apps
    match: {roles: [app]}
    checks:
      - {type: rate_limit, rpm: 600, tpm: 200000}
      - {type: budget, usd_per_day: 50}
      - {type: pii, mode: redact}
      - {type: injection, mode: block}
      - {type: token_cap, max_input_tokens: 8000}
"""


def test_the_design_example_parses_into_typed_checks() -> None:
    policy = parse_policy(GOOD, CHECKS)
    assert [c.type for c in policy.spec.rules[0].checks] == [
        "rate_limit",
        "budget",
        "pii",
        "injection",
        "token_cap",
    ]
    assert type(policy.spec.rules[0].checks[0]).__name__ == "RateLimitConfig"


def test_the_hash_follows_content_not_formatting() -> None:
    same = parse_policy(GOOD.replace("{type: pii, mode: redact}", "{mode: redact, type: pii}"), CHECKS)
    other = parse_policy(GOOD.replace("rpm: 600", "rpm: 601"), CHECKS)
    assert parse_policy(GOOD, CHECKS).hash == same.hash != other.hash
    assert len(same.hash) == 64 and same.short_hash == same.hash[:12]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace("rpm: 600", "rpx: 600"),
            "config/policies.yaml:5: rules.0.checks.0.rate_limit.rpx: unknown field",
        ),
        (GOOD.replace("type: pii", "type: pi"), "config/policies.yaml:7: rules.0.checks.2: Input tag 'pi'"),
        (
            GOOD.replace("mode: redact", "mode: redacts"),
            "config/policies.yaml:7: rules.0.checks.2.pii.mode: Input should be 'block', 'redact' or 'flag'",
        ),
        (
            "rules:\n  - name: a\n    match: {role: [app]}\n    checks: [{type: pii}]\n",
            "config/policies.yaml:3: rules.0.match.role: unknown field",
        ),
        (
            "rules:\n  - name: a\n    checks: [{type: rate_limit}]\n",
            "config/policies.yaml:3: rules.0.checks.0.rate_limit: a rate_limit needs rpm, tpm or both",
        ),
        (
            "rules:\n  - name: a\n    checks: [{type: pii}, {type: pii}]\n",
            "config/policies.yaml:2: rules.0: two pii checks in rule 'a': give each an `id`",
        ),
        (
            "rules:\n  - name: a\n    checks: [{type: injection, patterns: {x: '('}}]\n",
            "config/policies.yaml:3: rules.0.checks.0.injection.patterns: pattern 'x' is not a valid regex",
        ),
    ],
)
def test_errors_name_file_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_policy(text, CHECKS, "config/policies.yaml")
    assert err.value.message.startswith(message), err.value.message


def subject(**kw: object) -> Subject:
    base: dict[str, object] = {
        "key_id": "key_1",
        "principal": "team-a",
        "roles": frozenset({"app"}),
        "targets": (("prompt", "support_qa"), ("router", "default")),
        "route": "chat",
    }
    return Subject(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "fits"),
    [
        ({}, True),
        ({"roles": ["app"]}, True),
        ({"roles": ["admin"]}, False),
        ({"principals": ["team-*"], "prompts": ["support_*"]}, True),
        ({"principals": ["team-*"], "prompts": ["sales_*"]}, False),
        ({"routers": ["default"], "routes": ["chat"]}, True),
        ({"indexes": ["handbook"]}, False),  # a field given must match: no index here
        ({"keys": ["key_1", "key_2"]}, True),
    ],
)
def test_rule_matching(match: dict[str, list[str]], fits: bool) -> None:
    assert CompiledMatch.of(Match.model_validate(match)).fits(subject()) is fits


def test_the_example_in_the_docs_parses() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policies.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(rules:.*?)```", doc, re.S)
    assert example is not None
    policy = parse_policy(example.group(1), CHECKS, "docs/policies.md")
    assert [r.name for r in policy.spec.rules] == ["apps", "support-bot"]


def test_the_repository_default_parses() -> None:
    text = (Path(__file__).resolve().parents[2] / "config" / "policies.yaml").read_text(encoding="utf-8")
    assert [c.type for c in parse_policy(text, CHECKS).spec.rules[0].checks] == ["pii", "injection"]
