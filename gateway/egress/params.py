"""Which request parameters reach an upstream: an allow-list, whatever they come from.

A caller's body, a prompt's `params` (and its `extra_body`, merged into the body) and a router
deployment's `params` all pass through the same list: the request parameters of OpenAI's chat completions
and embeddings APIs (those litellm documents as its OpenAI-compatible input params), plus the
provider-specific sampling parameters an operator allows in `egress.request_params` (e.g. vLLM's `top_k`).
Anything else is refused, naming the field: in particular everything that would choose a host, a
credential, a header, a provider, a region or a callback (`api_base`, `base_url`, `api_key`,
`extra_headers`, `custom_llm_provider`, `aws_region_name`, `success_callback`, `mock_response`, any of
litellm's own keyword arguments), since litellm takes those as keyword arguments beside the request.

Nested places are checked too, where a key could otherwise ride along: `metadata` (OpenAI's flat map of
strings), `tools` and `functions` (function definitions only), `stream_options`, `tool_choice`,
`function_call`, `response_format`, `prediction`, `audio`, `web_search_options`, `thinking`: each holds
its documented keys only (a JSON schema's own content is the caller's). A Responses API body passed to a
deployment that serves it natively (`responses: native`) has its own list (`responses_problems`): its
top-level parameters, and the keys of its input items, content parts, tools, tool choice, text and
reasoning options.

The request path calls `ParamRules.check_request` early (before retrieval and policies); the adapters call
`ParamRules.check` on what they are about to send, as the last line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import InvalidRequest

Kind = Literal["chat", "embedding"]
Api = Literal["chat", "embedding", "responses"]
Loc = tuple[str | int, ...]

# OpenAI's chat completions request body (platform.openai.com/docs/api-reference/chat/create), and the
# OpenAI-compatible input params litellm translates (docs.litellm.ai/docs/completion/input; `thinking` is
# Anthropic's extended thinking, which litellm takes in OpenAI form). Left out on purpose: litellm's
# `extra_headers`, `api_version`, `custom_llm_provider`, `max_retries`, `drop_params`,
# `allowed_openai_params`, `additional_drop_params`: they steer the call, not the model.
CHAT_PARAMS = frozenset(
    {
        "messages", "model", "stream", "stream_options", "audio", "frequency_penalty", "function_call",
        "functions", "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata",
        "modalities", "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
        "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier", "seed",
        "service_tier", "stop", "store", "temperature", "tool_choice", "tools", "top_logprobs", "top_p",
        "user", "verbosity", "web_search_options", "thinking",
    }
)  # fmt: skip
# OpenAI's embeddings request body (platform.openai.com/docs/api-reference/embeddings/create).
EMBEDDING_PARAMS = frozenset({"input", "model", "dimensions", "encoding_format", "user"})

_METADATA_MAX_PAIRS, _METADATA_MAX_KEY, _METADATA_MAX_VALUE = 16, 64, 512  # OpenAI's limits
_TOOL_KEYS = frozenset({"type", "function", "custom", "cache_control"})
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "strict"})
_CUSTOM_TOOL_KEYS = frozenset({"name", "description", "format"})
_LEGACY_FUNCTION_KEYS = frozenset({"name", "description", "parameters"})
_STREAM_OPTION_KEYS = frozenset({"include_usage", "include_obfuscation"})
# chat's other objects, with OpenAI's keys (and Anthropic's extended thinking, as litellm takes it)
_OBJECT_KEYS: dict[str, frozenset[str]] = {
    "response_format": frozenset({"type", "json_schema"}),
    "prediction": frozenset({"type", "content"}),
    "audio": frozenset({"voice", "format"}),
    "web_search_options": frozenset({"search_context_size", "user_location"}),
    "thinking": frozenset({"type", "budget_tokens"}),
}
_JSON_SCHEMA_KEYS = frozenset({"name", "description", "schema", "strict"})
_USER_LOCATION_KEYS = frozenset({"type", "approximate"})
_APPROXIMATE_KEYS = frozenset({"city", "country", "region", "timezone"})
_TOOL_CHOICE_KEYS = frozenset({"type", "function", "custom", "allowed_tools"})
_NAMED_KEYS = frozenset({"name"})
_ALLOWED_TOOLS_KEYS = frozenset({"mode", "tools"})
_NESTED = frozenset(
    {"metadata", "tools", "functions", "stream_options", "tool_choice", "function_call", *_OBJECT_KEYS}
)  # checked inside (_nested_problems)

# OpenAI's Responses create body (platform.openai.com/docs/api-reference/responses/create) as a deployment
# serving it natively gets it (gateway/surfaces/responses.py `native_body`: the gateway keeps `store`,
# `previous_response_id`, `conversation` and its own fields), and the keys of what it nests.
RESPONSES_PARAMS = frozenset(
    {
        "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text",
        "temperature", "top_p", "max_output_tokens", "metadata", "stream", "user", "safety_identifier",
        "prompt_cache_key", "prompt_cache_retention", "service_tier", "reasoning", "truncation", "include",
        "background", "top_logprobs", "max_tool_calls", "context_management", "moderation", "prompt",
        "prompt_cache_options",
    }
)  # fmt: skip
_RESPONSES_ITEM_KEYS: dict[str, frozenset[str]] = {
    "message": frozenset({"type", "role", "content", "id", "status"}),
    "function_call": frozenset({"type", "call_id", "name", "arguments", "id", "status"}),
    "function_call_output": frozenset({"type", "call_id", "output", "id", "status"}),
}
_RESPONSES_PART_KEYS: dict[str, frozenset[str]] = {
    "input_text": frozenset({"type", "text"}),
    "text": frozenset({"type", "text"}),
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "input_image": frozenset({"type", "image_url", "detail"}),
}
_RESPONSES_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})
_RESPONSES_TOOL_CHOICE_KEYS = frozenset({"type", "name"})
_RESPONSES_TEXT_KEYS = frozenset({"format", "verbosity"})
_RESPONSES_FORMAT_KEYS = frozenset({"type", "name", "schema", "description", "strict"})
_RESPONSES_REASONING_KEYS = frozenset({"effort", "summary", "generate_summary", "context", "mode"})


@dataclass(frozen=True, slots=True)
class ParamProblem:
    loc: Loc
    reason: str
    code: str  # forbidden_parameter (steers the call), unknown_parameter, invalid_parameter

    @property
    def path(self) -> str:
        return ".".join(str(p) for p in self.loc)

    @property
    def message(self) -> str:
        return f"{self.path}: {self.reason}"


class ParamRules:
    """The allow-list: OpenAI's parameters for the kind of call, plus the operator's `request_params`."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra = frozenset(extra)
        self._plain = {"chat": CHAT_PARAMS | self.extra, "embedding": EMBEDDING_PARAMS | self.extra}

    def allowed(self, name: str, kind: Kind) -> bool:
        return name in (CHAT_PARAMS if kind == "chat" else EMBEDDING_PARAMS) or name in self.extra

    def problems(self, params: Mapping[str, Any], kind: Kind) -> list[ParamProblem]:
        """Every key that may not be sent, and every nested place that would smuggle one."""
        keys = params.keys()
        if keys <= self._plain[kind]:  # the common case: known keys; only the nested places to look into
            if keys.isdisjoint(_NESTED):
                return []
            return [
                p for name, value in params.items() if name in _NESTED for p in _nested_problems(name, value)
            ]
        found: list[ParamProblem] = []
        for name, value in params.items():
            if not isinstance(name, str) or not self.allowed(name, kind):
                found.append(_refusal((str(name),), kind))
            else:
                found.extend(_nested_problems(name, value))
        return found

    def check(self, params: Mapping[str, Any], kind: Kind) -> None:
        """400 naming the first field that may not be sent upstream."""
        _raise_first(self.problems(params, kind))

    def check_responses(self, body: Mapping[str, Any]) -> None:
        """400 naming the first field of a Responses API body that may not be sent upstream as it is."""
        check_responses_params(body)

    def check_request(self, body: Mapping[str, Any], kind: Kind) -> None:
        """A caller's body, before any work: the gateway's own fields (prompt_variables, ...) are allowed."""
        from gateway.api_requests import GATEWAY_FIELDS

        self.check({k: v for k, v in body.items() if k not in GATEWAY_FIELDS}, kind)


def check_request_params(
    body: Mapping[str, Any], where: str = "request", *, kind: Kind = "chat", rules: ParamRules | None = None
) -> None:
    """Refuse (400, naming the field) a body holding anything that may not reach an upstream.

    `where` says which body it is in the message (e.g. "request", "prompt support_qa"); `rules` carries the
    operator's extra parameters (`Adapters.params`), the built-in list alone when not given."""
    rules = rules or ParamRules()
    problems = rules.problems(body, kind)
    if problems:
        first = problems[0]
        message = first.message if where == "request" else f"{where}: {first.message}"
        raise InvalidRequest(message, param=first.path, code=first.code)


def check_responses_params(body: Mapping[str, Any]) -> None:
    """Refuse (400, naming the field) a Responses API body holding a key, top level or nested, that is
    not OpenAI's: before the bridge drops it, and before a native deployment gets it."""
    _raise_first(responses_problems(body))


def responses_problems(body: Mapping[str, Any]) -> list[ParamProblem]:
    """Every key of a Responses API body, top level or nested, that is not one of OpenAI's: what the
    chat bridge would drop and a deployment serving the API natively would get as it is. Values of the
    wrong type are left to the body's schema (gateway/surfaces/responses.py), which names them."""
    found = [_refusal((str(k),), "responses") for k in body if k not in RESPONSES_PARAMS]
    for name, each in (("input", _responses_item_problems), ("tools", _responses_tool_problems)):
        items = body.get(name)
        if isinstance(items, list):
            found.extend(
                p for i, item in enumerate(items) if isinstance(item, Mapping) for p in each((name, i), item)
            )
    nested = (
        (("tool_choice",), body.get("tool_choice"), _RESPONSES_TOOL_CHOICE_KEYS),
        (("text",), body.get("text"), _RESPONSES_TEXT_KEYS),
        (("text", "format"), (body.get("text") or {}).get("format") if isinstance(body.get("text"), Mapping) else None, _RESPONSES_FORMAT_KEYS),
        (("reasoning",), body.get("reasoning"), _RESPONSES_REASONING_KEYS),
    )  # fmt: skip
    for loc, value, keys in nested:
        if isinstance(value, Mapping):
            found.extend(_keys_problems(loc, value, keys, "responses"))
    if isinstance(body.get("metadata"), Mapping):
        found.extend(_metadata_problems(body["metadata"]))
    return found


def _responses_item_problems(loc: Loc, item: Mapping[str, Any]) -> list[ParamProblem]:
    kind = item.get("type", "message")
    allowed = _RESPONSES_ITEM_KEYS.get(kind) if isinstance(kind, str) else None
    if allowed is None:
        return [_invalid((*loc, "type"), "only message, function_call and function_call_output items")]
    found = _keys_problems(loc, item, allowed, "responses")
    content = item.get("content")
    if kind == "message" and isinstance(content, list):
        for j, part in enumerate(content):
            where = (*loc, "content", j)
            part_kind = part.get("type") if isinstance(part, Mapping) else None
            keys = _RESPONSES_PART_KEYS.get(part_kind) if isinstance(part_kind, str) else None
            if keys is None:
                found.append(_invalid(where, "only input_text, output_text and input_image (by URL) parts"))
            else:
                found.extend(_keys_problems(where, part, keys, "responses"))
    return found


def _responses_tool_problems(loc: Loc, tool: Mapping[str, Any]) -> list[ParamProblem]:
    found = _keys_problems(loc, tool, _RESPONSES_TOOL_KEYS, "responses")
    if not found and tool.get("type") != "function":
        return [_invalid(loc, "only function tools ({type: function, name, parameters}) are served")]
    return found


def _raise_first(problems: list[ParamProblem]) -> None:
    if problems:
        first = problems[0]
        raise InvalidRequest(first.message, param=first.path, code=first.code)


_API_NAMES = {"chat": "chat completion", "embedding": "embeddings", "responses": "Responses"}


def _refusal(loc: Loc, kind: Api) -> ParamProblem:
    if steers_the_call(str(loc[-1])):
        return ParamProblem(
            loc,
            "choosing a host, credential, header, provider, region or callback is not allowed here; only the"
            " operator configures where and how the gateway calls a provider (router deployments, egress in"
            " config/gateway.yaml). Remove the field.",
            "forbidden_parameter",
        )
    return ParamProblem(
        loc,
        f"not a request parameter opsgate sends upstream; send OpenAI {_API_NAMES[kind]} parameters only (an operator"
        " can allow a provider-specific sampling parameter in egress.request_params in config/gateway.yaml)",
        "unknown_parameter",
    )


def _invalid(loc: Loc, reason: str) -> ParamProblem:
    return ParamProblem(loc, reason, "invalid_parameter")


def _nested_problems(name: str, value: Any) -> list[ParamProblem]:
    if name == "metadata":
        return _metadata_problems(value)
    if name == "tools":
        return _list_problems(name, value, _tool_problems)
    if name == "functions":
        return _list_problems(name, value, _legacy_function_problems)
    if value is None or name not in _NESTED:
        return []
    if name == "stream_options":
        return _keys_problems((name,), value, _STREAM_OPTION_KEYS)
    if name == "tool_choice":
        return [] if isinstance(value, str) else _tool_choice_problems((name,), value)
    if name == "function_call":
        return [] if isinstance(value, str) else _keys_problems((name,), value, _NAMED_KEYS)
    found = _keys_problems((name,), value, _OBJECT_KEYS[name])
    if found:
        return found
    if name == "response_format" and value.get("json_schema") is not None:
        return _keys_problems((name, "json_schema"), value["json_schema"], _JSON_SCHEMA_KEYS)
    if name == "web_search_options" and value.get("user_location") is not None:
        location = value["user_location"]
        found = _keys_problems((name, "user_location"), location, _USER_LOCATION_KEYS)
        if not found and location.get("approximate") is not None:
            where = (name, "user_location", "approximate")
            return _keys_problems(where, location["approximate"], _APPROXIMATE_KEYS)
    return found


def _tool_choice_problems(loc: Loc, choice: Any) -> list[ParamProblem]:
    """`{type: function, function: {name}}`, `{type: custom, custom: {name}}`, or `{type: allowed_tools,
    allowed_tools: {mode, tools: [such choices]}}`."""
    found = _keys_problems(loc, choice, _TOOL_CHOICE_KEYS)
    if found:
        return found
    for key in ("function", "custom"):
        if choice.get(key) is not None:
            found.extend(_keys_problems((*loc, key), choice[key], _NAMED_KEYS))
    allowed = choice.get("allowed_tools")
    if allowed is not None:
        found.extend(_keys_problems((*loc, "allowed_tools"), allowed, _ALLOWED_TOOLS_KEYS))
        if not found and allowed.get("tools") is not None:
            tools = allowed["tools"]
            if not isinstance(tools, list):
                return [_invalid((*loc, "allowed_tools", "tools"), "must be a list")]
            for i, tool in enumerate(tools):
                found.extend(_tool_choice_problems((*loc, "allowed_tools", "tools", i), tool))
    return found


def _metadata_problems(value: Any) -> list[ParamProblem]:
    if value is None:
        return []
    if not isinstance(value, Mapping) or len(value) > _METADATA_MAX_PAIRS:
        return [_invalid(("metadata",), f"must be an object of at most {_METADATA_MAX_PAIRS} string pairs")]
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            return [_invalid(("metadata", str(key)), "metadata keys and values must be strings")]
        if len(key) > _METADATA_MAX_KEY or len(item) > _METADATA_MAX_VALUE:
            return [
                _invalid(
                    ("metadata", key),
                    f"keys are at most {_METADATA_MAX_KEY} characters, values at most {_METADATA_MAX_VALUE}",
                )
            ]
    return []


def _list_problems(name: str, value: Any, each: Any) -> list[ParamProblem]:
    if value is None:
        return []
    if not isinstance(value, list):
        return [_invalid((name,), "must be a list")]
    found: list[ParamProblem] = []
    for i, item in enumerate(value):
        found.extend(each((name, i), item))
    return found


def _keys_problems(loc: Loc, value: Any, allowed: frozenset[str], api: Api = "chat") -> list[ParamProblem]:
    if not isinstance(value, Mapping):
        return [_invalid(loc, "must be an object")]
    return [_refusal((*loc, str(k)), api) for k in value if k not in allowed]


def _tool_problems(loc: Loc, tool: Any) -> list[ParamProblem]:
    """Function (and custom) tools only: other tool types make a provider or litellm reach a server."""
    found = _keys_problems(loc, tool, _TOOL_KEYS)
    if found:
        return found
    kind = tool.get("type")
    if kind == "function":
        return _keys_problems((*loc, "function"), tool.get("function"), _FUNCTION_KEYS)
    if kind == "custom":
        return _keys_problems((*loc, "custom"), tool.get("custom"), _CUSTOM_TOOL_KEYS)
    return [_invalid((*loc, "type"), "only function tools (type: function, or custom) are accepted")]


def _legacy_function_problems(loc: Loc, function: Any) -> list[ParamProblem]:
    return _keys_problems(loc, function, _LEGACY_FUNCTION_KEYS)


# Words (between underscores) of parameter names that choose where or how a call is made. Used to explain
# a refusal and to keep the operator from allowing such a name by mistake; the decision itself is always
# the allow-list.
_STEERING_WORDS = frozenset(
    {
        "api", "base", "url", "uri", "endpoint", "host", "hostname", "port", "key", "keys", "secret",
        "password", "credential", "credentials", "auth", "authorization", "header",
        "headers", "cookie", "cookies", "provider", "region", "location", "project", "callback",
        "callbacks", "hook", "hooks", "litellm", "proxy", "mock", "aws", "vertex", "vertexai", "azure",
        "gcp", "google", "bedrock", "sagemaker", "timeout", "retries", "retry", "fallback", "fallbacks",
        "client", "session", "deployment", "organization", "org", "tenant", "extra", "custom", "cost",
        "budget", "ssl", "verify", "cert", "langfuse", "langsmith", "s3", "gcs", "logger", "logging",
    }
)  # fmt: skip


def steers_the_call(name: str) -> bool:
    """Whether a parameter name looks like it picks a host, credential, header, provider, region or
    callback (for messages and as a guard on the operator's list; the allow-list decides)."""
    lowered = name.lower()
    words = set(re.split(r"[^a-z0-9]+", lowered))
    return bool(words & _STEERING_WORDS) or lowered.startswith("_")
