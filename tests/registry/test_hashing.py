"""Canonical content: defaults left out, discriminators kept, and a stored spec parses back to itself."""

from __future__ import annotations

from gateway.registry.hashing import canonical_data, content_hash
from gateway.retrieval.spec import IndexSpec
from gateway.routing.spec import RouterSpec


def test_discriminators_survive_and_specs_round_trip() -> None:
    weighted = RouterSpec.model_validate(
        {
            "name": "r",
            "strategy": {"type": "weighted"},
            "deployments": [{"id": "a", "model": "local/extractive"}],
        }
    )
    fallback = RouterSpec.model_validate(
        {"name": "r", "deployments": [{"id": "a", "model": "local/extractive"}]}
    )
    assert canonical_data(weighted)["strategy"] == {"type": "weighted"}
    assert content_hash(weighted) != content_hash(fallback)
    for spec in (weighted, fallback):
        assert RouterSpec.model_validate(canonical_data(spec)) == spec

    sentences = IndexSpec.model_validate(
        {"name": "i", "source": {"type": "files", "paths": ["*.md"]}, "chunker": {"type": "sentences"}}
    )
    default = IndexSpec.model_validate({"name": "i", "source": {"type": "files", "paths": ["*.md"]}})
    assert canonical_data(sentences)["chunker"]["type"] == "sentences"
    assert IndexSpec.model_validate(canonical_data(sentences)) == sentences
    assert content_hash(sentences) != content_hash(default)


def test_defaults_do_not_change_the_hash() -> None:
    implicit = RouterSpec.model_validate(
        {"name": "r", "deployments": [{"id": "a", "model": "local/extractive"}]}
    )
    explicit = RouterSpec.model_validate(
        {
            "name": "r",
            "retries": 0,
            "deployments": [{"id": "a", "model": "local/extractive", "timeout_s": 30}],
        }
    )
    assert content_hash(implicit) == content_hash(explicit)
