"""A `judge` mode for the fake upstream: answers ragas' LLM prompts with judge-shaped JSON.

ragas (instructor, JSON mode) puts the response model's JSON schema in the system message; the mode
reads it and answers a valid instance. `judge` says yes to everything (verdicts 1, committal answers);
`judge-0` says no (verdicts 0, noncommittal), so a test can tell the judge's answer reached the score.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.upstream import Hit

_SCHEMA = re.compile(r"json_schema:\s*(\{.*\})\s*Make sure to return", re.S)
_QUESTION = re.compile(r'"(?:question|user_input|response)":\s*"((?:[^"\\]|\\.)*)"')
YES_FIELDS = {"verdict", "attributed"}
NO_FIELDS = {"noncommittal"}


def instance(node: dict[str, Any], root: dict[str, Any], yes: int, name: str, question: str) -> Any:
    if "$ref" in node:
        return instance(root["$defs"][node["$ref"].rsplit("/", 1)[1]], root, yes, name, question)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        return instance(options[0], root, yes, name, question)
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        return {k: instance(v, root, yes, k, question) for k, v in props.items()}
    if kind == "array":
        return [instance(node.get("items", {"type": "string"}), root, yes, name, question)]
    if kind in ("integer", "number"):
        return yes if name in YES_FIELDS else (1 - yes if name in NO_FIELDS else 1)
    if kind == "boolean":
        return bool(yes)
    if name == "question":
        return question or "What is the answer?"
    return "The answer is supported by the context."


async def judge_mode(hit: Hit) -> web.StreamResponse | None:
    if hit.endpoint != "chat/completions":
        return None
    messages = hit.body.get("messages") or []
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    match = _SCHEMA.search(system)
    if match is None:
        return await hit.reply(content="{}")
    schema = orjson.loads(match.group(1))
    users = " ".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
    asked = _QUESTION.findall(users)
    yes = 0 if hit.args[:1] == ["0"] else 1
    answer = instance(schema, schema, yes, "", asked[-1] if asked else "")
    return await hit.reply(content=orjson.dumps(answer).decode())
