"""`gateway/yamlspec.py`: one `path:line: field: problem` line for every bad file."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.retrieval.spec import IndexSpec
from gateway.routing.spec import RouterSpec
from gateway.yamlspec import load_spec_text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: r\ndeployments: [{id: a, model: local/x}]\nname: s\n",
            "r.yaml:3: name: duplicate key (also on line 1); YAML would keep only the last one silently: remove one",
        ),
        (
            "name: r\ndeployments:\n  - id: a\n    model: local/x\n    timeout_s: 3\n    timeout_s: 30\n",
            "r.yaml:6: deployments.0.timeout_s: duplicate key (also on line 5); YAML would keep only the last"
            " one silently: remove one",
        ),
        ("name: r\ndeployments: [{id: a, model: localx}]\n", "r.yaml:2: deployments.0.model: must be"),
    ],
)
def test_router_file_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_spec_text(text, RouterSpec, "r.yaml")
    assert err.value.message.startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "name: i\nsource: {paths: [a]}\nchunker: {type: tokens, size: 5}\n",
            "i.yaml:3: chunker.tokens.size: Input",
        ),
        (
            "name: i\nsource: {type: files, paths: ['../a']}\n",
            "i.yaml:2: source.files: '../a': paths are globs",
        ),
        ("name: i\nsource: {type: jsonl}\n", "i.yaml:2: source.jsonl.paths: Field required"),
        (
            "name: i\nsource: {paths: [a]}\nsource: {paths: [b]}\n",
            "i.yaml:3: source: duplicate key (also on line 2)",
        ),
    ],
)
def test_index_file_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_spec_text(text, IndexSpec, "i.yaml")
    assert err.value.message.startswith(message)


def test_merge_keys_are_not_duplicates() -> None:
    merged = "name: r\ndeployments:\n  - <<: {id: a, model: local/x}\n    timeout_s: 5\n"
    assert load_spec_text(merged, RouterSpec, "r.yaml").deployments[0].timeout_s == 5
