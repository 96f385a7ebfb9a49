"""What an upstream's answer must be before the gateway reads it: a chat completion, a stream chunk, an
embeddings list, or (for deployments serving it natively) a Responses API object, in the shapes OpenAI
documents.

An answer that is not (an error body sent with HTTP 200, `choices` that are not choice objects, a text
that is not a string) is the upstream's fault, raised as an `UpstreamError` naming the deployment: a
failed attempt (the router falls back, and the deployment moves toward cooldown), a 502 to the caller.
Only what the gateway reads is checked; fields it passes through untouched stay the upstream's business.
A plain answer's `usage` must hold whole numbers (a stream's is counted by the gateway when it does not,
gateway/flow/sse.py).
"""

from __future__ import annotations

from typing import Any, NoReturn

from gateway.errors import UpstreamError
from gateway.providers.base import Json, upstream_message
from gateway.providers.deployment import Deployment
from gateway.tokens_cost import usage_problem


def check_chat(data: Json, deployment: Deployment) -> Json:
    """A `chat.completion` object, or the upstream's fault."""
    _raise_error_body(data, deployment, "choices")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        _fail(deployment, f"choices = {_shown(choices)}, which is not a list of choices")
    for i, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            _fail(deployment, f"choices[{i}] = {_shown(choice)}, which is not a choice with a message")
        problem = _message_problem(message, complete=True)
        if problem:
            _fail(deployment, f"choices[{i}].message.{problem}")
    problem = usage_problem(data["usage"]) if data.get("usage") is not None else None
    if problem:  # not retried: a count the upstream cannot make (the gateway counts a stream's itself)
        raise UpstreamError(
            f"deployment {deployment.id!r} ({deployment.model}) answered with {problem}, which is not a token"
            " count",
            retryable=False,
            deployment=deployment.id,
            code="invalid_upstream_usage",
        )
    return data


def check_embeddings(data: Json, deployment: Deployment) -> Json:
    """An embeddings list (`data`: objects whose `embedding` is a list of numbers, or base64 text), or
    the upstream's fault."""
    _raise_error_body(data, deployment, "data")
    items = data.get("data")
    if not isinstance(items, list):
        _fail(deployment, f"data = {_shown(items)}, which is not a list of embeddings")
    for i, item in enumerate(items):
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list | str) or (isinstance(vector, list) and not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in vector
        )):  # fmt: skip
            _fail(deployment, f"data[{i}] = {_shown(item)}, which is not an embedding")
    return data


def check_chunk(chunk: Json, deployment: Deployment) -> Json:
    """A `chat.completion.chunk` object (choices may be absent or empty), or the upstream's fault."""
    choices = chunk.get("choices")
    if choices is None:
        return chunk
    if not isinstance(choices, list):
        _fail(deployment, f"a stream chunk whose choices = {_shown(choices)}, which is not a list")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict) or not _index(choice):
            _fail(deployment, f"a stream chunk whose choices[{i}] = {_shown(choice)}, which is not a choice")
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            _fail(deployment, f"a stream chunk whose choices[{i}].delta = {_shown(delta)}, not a delta")
        problem = _message_problem(delta, complete=False) if delta else None
        if problem:
            _fail(deployment, f"a stream chunk whose choices[{i}].delta.{problem}")
    return chunk


def check_responses(data: Json, deployment: Deployment) -> Json:
    """A Responses API `response` object (as a deployment serving it natively answers), or its fault."""
    _raise_error_body(data, deployment, "output")
    if data.get("status") == "failed":
        _fail(deployment, f"a failed response: {upstream_message(data, 'no error given')}")
    output = data.get("output")
    if not isinstance(output, list):
        _fail(deployment, f"output = {_shown(output)}, which is not a list of items")
    for i, item in enumerate(output):
        if not isinstance(item, dict):
            _fail(deployment, f"output[{i}] = {_shown(item)}, which is not an item")
        kind = item.get("type")
        if kind == "message":
            content = item.get("content")
            if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
                _fail(deployment, f"output[{i}].content = {_shown(content)}, which is not a list of parts")
            for j, part in enumerate(content):
                if part.get("type") == "output_text" and not isinstance(part.get("text"), str):
                    _fail(deployment, f"output[{i}].content[{j}].text = {_shown(part.get('text'))}, not text")
        elif kind == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    _fail(deployment, f"output[{i}].{key} = {_shown(item.get(key))}, which is not a string")
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        _fail(deployment, f"usage = {_shown(usage)}, which is not an object")
    return data


def _raise_error_body(data: Json, deployment: Deployment, expected: str) -> None:
    """An error object where the answer should be: the upstream failed and said so with HTTP 200."""
    if data.get("error") and expected not in data:
        raise UpstreamError(
            f"deployment {deployment.id!r} ({deployment.model}) answered HTTP 200 with an error:"
            f" {upstream_message(data, 'no message')}",
            deployment=deployment.id,
            code="upstream_error_body",
        )


def _message_problem(message: Json, *, complete: bool) -> str | None:
    content = message.get("content")
    if content is not None and not isinstance(content, str) and not (complete and isinstance(content, list)):
        return f"content = {_shown(content)}, which is not text"
    calls = message.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list):
        return f"tool_calls = {_shown(calls)}, which is not a list"
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not _index(call):
            return f"tool_calls[{i}] = {_shown(call)}, which is not a tool call"
        function = call.get("function")
        if function is None and not complete:
            continue  # a streamed tool call's later chunks may carry only its index
        if not isinstance(function, dict):
            return f"tool_calls[{i}] = {_shown(call)}, which is not a function call"
        for key in ("name", "arguments"):
            value = function.get(key)
            if not isinstance(value, str) and (complete or value is not None):
                return f"tool_calls[{i}].function.{key} = {_shown(value)}, which is not a string"
    return None


def _index(part: Json) -> bool:
    """Whether a choice's or tool call's `index`, when it has one, is a whole number."""
    index = part.get("index")
    return index is None or (isinstance(index, int) and not isinstance(index, bool))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(deployment: Deployment, problem: str) -> NoReturn:
    raise UpstreamError(
        f"deployment {deployment.id!r} ({deployment.model}) answered with {problem}",
        deployment=deployment.id,
        code="invalid_upstream_answer",
    )
