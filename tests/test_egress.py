"""The operator's egress rules: host entries, URL readings, key variables, the config's own guards, and
the examples in README.md and docs/security.md, loaded as a project would load them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.egress import Egress, EgressConfig, HostPattern, parse_target
from gateway.errors import ConfigError
from gateway.registry.files import load_artifacts
from gateway.yamlspec import load_spec_text
from tests.fakes.gateway import REPO

RULES = Egress(EgressConfig(hosts=["localhost:11434", "127.0.0.1:*", "*.corp.example.com"]))


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.openai.com/v1", True),
        ("http://api.openai.com/v1", True),  # the default port of its scheme
        ("https://api.openai.com:8443/v1", False),
        ("https://x.openai.azure.com/openai", True),
        ("https://a.b.openai.azure.com/openai", False),  # * is one label
        ("https://bedrock-runtime.eu-west-1.amazonaws.com", True),
        ("http://localhost:11434/v1", True),
        ("http://LOCALHOST.:11434/v1", True),  # the same host
        ("http://localhost:11435/v1", False),
        ("http://127.0.0.1:9/v1", True),
        ("http://127.1:9/v1", False),  # spelled differently: not the listed host
        ("http://2130706433:9/v1", False),
        ("http://[::ffff:127.0.0.1]:9/v1", False),
        ("http://[::1]:9/v1", False),
        ("https://api.corp.example.com/v1", True),
        ("https://corp.example.com.attacker.net/v1", False),
        ("http://api.openai.com@attacker.net/v1", False),  # user information
        ("http://attacker.net\\@api.openai.com/v1", False),  # read differently by different clients
        ("http://api.openai.com\t/v1", False),
        ("ftp://api.openai.com/v1", False),
        ("https://ünïcode.example/v1", False),
        ("https://api.openai.com%2f@attacker.net/", False),
    ],
)
def test_which_urls_the_rules_allow(url: str, allowed: bool) -> None:
    assert (RULES.url_problem(url) is None) == allowed


def test_without_provider_hosts_only_listed_hosts_remain() -> None:
    rules = Egress(EgressConfig(provider_hosts=False, hosts=["llm.internal:443"]))
    assert rules.url_problem("https://api.openai.com/v1") is not None
    assert rules.url_problem("https://llm.internal/v1") is None
    assert rules.default_host_problem("openai") is not None
    assert "set api_base" in (rules.default_host_problem("azure") or "")
    assert "does not know" in (rules.default_host_problem("nonesuch") or "")


def test_key_variables() -> None:
    rules = Egress(EgressConfig(api_key_envs=["*_API_KEY", "VLLM_TOKEN"]))
    assert rules.env_problem("ANTHROPIC_API_KEY") is None
    assert rules.env_problem("VLLM_TOKEN") is None
    for name in ("DATABASE_URL", "OPSGATE_API_KEY", "OPSGATE_DATABASE_URL", "HOME", "anthropic_api_key"):
        assert rules.env_problem(name) is not None, name


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("egress:\n  request_params: [api_base]\n", "egress.request_params"),
        ("egress:\n  request_params: [aws_region_name]\n", "egress.request_params"),
        ("egress:\n  request_params: [num_retries]\n", "egress.request_params"),
        ("egress:\n  api_key_envs: ['*']\n", "egress.api_key_envs"),
        ("egress:\n  api_key_envs: ['OPSGATE_*']\n", "egress.api_key_envs"),
        ("egress:\n  deployment_headers: [Authorization]\n", "egress.deployment_headers"),
        ("egress:\n  hosts: ['*.com']\n", "egress.hosts"),
        ("egress:\n  hosts: ['http://x.example.com']\n", "egress.hosts"),
        ("alerts:\n  webhooks:\n    - {url: 'https://hooks.example.com/x'}\n", "alerts.webhooks.0.url"),
    ],
)
def test_the_operator_cannot_open_what_must_stay_closed(yaml_text: str, field: str) -> None:
    from gateway.settings import GatewayConfig

    with pytest.raises(ConfigError) as refused:
        load_spec_text(yaml_text, GatewayConfig, "config/gateway.yaml")
    assert f": {field}: " in refused.value.message


def test_host_entries_parse() -> None:
    assert HostPattern.parse("[::1]:8000").matches(parse_target("http://[::1]:8000/v1"))
    assert HostPattern.parse("api.example.com:*").matches(parse_target("http://api.example.com:1234"))
    assert not HostPattern.parse("api.example.com").matches(parse_target("http://api.example.com:1234"))


def _yaml_blocks(text: str, heading: str) -> dict[str, str]:
    """The ```yaml blocks under a heading, keyed by their first-line comment (the file they show)."""
    section = re.split(r"\n#{1,3} [A-Z]", text.split(heading, 1)[1])[0]  # to the next heading
    blocks = re.findall(r"```yaml\n# (\S+)\n(.*?)```", section, flags=re.S)
    return dict(blocks)


@pytest.mark.parametrize(
    ("doc", "heading"),
    [("README.md", "## Routers"), ("docs/security.md", "### Local models: Ollama and vLLM")],
)
def test_the_local_model_examples_load(tmp_path: Path, doc: str, heading: str) -> None:
    blocks = _yaml_blocks((REPO / doc).read_text(encoding="utf-8"), heading)
    assert set(blocks) == {"config/gateway.yaml", "config/routers/local-llm.yaml"}
    for rel, text in blocks.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    found, errors = load_artifacts(tmp_path, ("router",))
    assert errors == [] and [a.name for a in found] == ["local-llm"]
    (tmp_path / "config/gateway.yaml").write_text("", encoding="utf-8")  # without the operator's list
    _, errors = load_artifacts(tmp_path, ("router",))
    assert errors and "localhost:11434 is not on the operator's egress allow-list" in errors[0].message
