"""A plugin adapter (an entry point in `opsgate.adapters`) can be named in a router file with `adapter:`;
a name that is no installed adapter is refused at load, naming the field."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from gateway.providers import Adapters
from gateway.providers.base import AdapterServices
from gateway.providers.deployment import adapter_names
from gateway.providers.minilm import MiniLMEmbedder
from gateway.routing.spec import RouterSpec

PLUGIN = """
class EchoAdapter:
    def __init__(self, services):
        self.services = services

    async def close(self):
        pass


def create(services):
    return EchoAdapter(services)
"""


@pytest.fixture
def echo_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    site = tmp_path_factory.mktemp("site")
    (site / "opsgate_echo_adapter.py").write_text(PLUGIN)
    dist = site / "opsgate_echo_adapter-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: opsgate-echo-adapter\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[opsgate.adapters]\necho = opsgate_echo_adapter:create\n")
    sys.path.insert(0, str(site))
    adapter_names.cache_clear()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("opsgate_echo_adapter", None)
        adapter_names.cache_clear()


def router(adapter: str) -> RouterSpec:
    return RouterSpec.model_validate(
        {"name": "r", "deployments": [{"id": "d", "model": "somewhere/model-x", "adapter": adapter}]}
    )


def test_a_router_file_names_a_plugin_adapter(echo_plugin: None) -> None:
    spec = router("echo")
    adapters = Adapters(AdapterServices(MiniLMEmbedder()))
    chosen = adapters.for_deployment(spec.deployments[0])
    assert type(chosen).__name__ == "EchoAdapter"
    # the plugin decides where it goes: the operator's host allow-list is not applied to it
    assert not spec.deployments[0].reaches_network(frozenset({"echo"}))


def test_an_adapter_that_is_not_installed_is_refused_at_load() -> None:
    with pytest.raises(ValidationError) as err:
        router("echo")
    problem = err.value.errors()[0]
    assert problem["loc"] == ("deployments", 0, "adapter")
    assert "no adapter named 'echo'" in problem["msg"] and "litellm" in problem["msg"]
    assert router("litellm").deployments[0].adapter == "litellm"
