"""The request-parameter allow-list: what passes, what is refused and how, and that it never lets through
one of litellm's own arguments."""

from __future__ import annotations

import pytest

from gateway.egress.params import CHAT_PARAMS, EMBEDDING_PARAMS, ParamRules, check_request_params
from gateway.errors import InvalidRequest
from gateway.offline import apply_offline_env


def test_no_allowed_name_is_a_litellm_argument_but_metadata() -> None:
    """litellm takes its settings as keyword arguments beside the request's: none may be on the list
    (metadata is OpenAI's, and the litellm adapter does not pass it)."""
    apply_offline_env()
    from litellm.types.utils import is_litellm_owned_kwarg

    assert {n for n in CHAT_PARAMS | EMBEDDING_PARAMS if is_litellm_owned_kwarg(n)} == {"metadata"}


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"api_base": "http://x"}, "api_base", "forbidden_parameter"),
        ({"AWS_REGION_NAME": "x"}, "AWS_REGION_NAME", "forbidden_parameter"),
        ({"extra_body": {}}, "extra_body", "forbidden_parameter"),
        ({"prompt_variables": {}}, "prompt_variables", "unknown_parameter"),  # the gateway's: never upstream
        ({"best_of": 2}, "best_of", "unknown_parameter"),
        ({"metadata": {"k": 1}}, "metadata.k", "invalid_parameter"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_parameter"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools.0.type", "invalid_parameter"),
        ({"tools": [{"type": "function", "function": {"name": "f"}, "server_url": "x"}]}, "tools.0.server_url", "forbidden_parameter"),
        ({"tools": "x"}, "tools", "invalid_parameter"),
        ({"stream_options": {"include_usage": True, "x": 1}}, "stream_options.x", "unknown_parameter"),
    ],
)  # fmt: skip
def test_refusals_name_the_field(body: dict[str, object], param: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        ParamRules().check({"model": "m", "messages": [], **body}, "chat")
    assert (refused.value.param, refused.value.code, refused.value.status) == (param, code, 400)
    assert refused.value.message.startswith(f"{param}: ")


def test_allowed_bodies_pass() -> None:
    rules = ParamRules(["top_k"])
    rules.check(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.2,
            "metadata": {"ticket": "42"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"api_base": "a field"}}}],
            "stream_options": {"include_usage": True},
            "top_k": 5,
        },
        "chat",
    )
    rules.check({"model": "m", "input": ["x"], "dimensions": 8, "top_k": 1}, "embedding")
    with pytest.raises(InvalidRequest):
        rules.check({"model": "m", "input": ["x"], "temperature": 1}, "embedding")


def test_the_request_path_check_skips_the_gateways_own_fields() -> None:
    rules = ParamRules()
    rules.check_request(
        {"model": "p", "prompt_variables": {"a": 1}, "opsgate": {"include_context": True}}, "chat"
    )
    with pytest.raises(InvalidRequest) as refused:
        check_request_params({"model": "p", "base_url": "http://x"}, "prompt support_qa")
    assert refused.value.message.startswith("prompt support_qa: base_url: ")
