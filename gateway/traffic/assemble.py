"""A streamed chat completion put back together: the `chat.completion` the chunks add up to.

Content and refusals are concatenated per choice; tool calls are assembled by their `index` (the id,
type and name come once, the arguments in pieces), as the official clients do it.
"""

from __future__ import annotations

from typing import Any

from gateway.tokens_cost import usage_problem

Json = dict[str, Any]


class ChunkAssembler:
    def __init__(self) -> None:
        self.meta: Json = {}
        self.usage: Json | None = None
        self._choices: dict[int, Json] = {}

    def add(self, chunk: Json) -> None:
        if not self.meta:
            self.meta = {k: chunk[k] for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
        if chunk.get("usage") and usage_problem(chunk["usage"]) is None:  # else counted by the gateway
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: Json) -> None:
        index = int(choice.get("index") or 0)
        out = self._choices.setdefault(
            index, {"index": index, "message": {"role": "assistant", "content": None}, "finish_reason": None}
        )
        message = out["message"]
        delta = choice.get("delta") or {}
        for key in ("content", "refusal"):
            piece = delta.get(key)
            if isinstance(piece, str):
                message[key] = (message.get(key) or "") + piece
        for call in delta.get("tool_calls") or ():
            _add_tool_call(message.setdefault("tool_calls", []), call)
        if choice.get("finish_reason"):
            out["finish_reason"] = choice["finish_reason"]

    def completion(self) -> Json:
        data: Json = {
            "id": self.meta.get("id", ""),
            "object": "chat.completion",
            "created": self.meta.get("created", 0),
            "model": self.meta.get("model", ""),
            "choices": [self._choices[i] for i in sorted(self._choices)],
        }
        if "system_fingerprint" in self.meta:
            data["system_fingerprint"] = self.meta["system_fingerprint"]
        if self.usage is not None:
            data["usage"] = self.usage
        return data


def _add_tool_call(calls: list[Json], delta: Json) -> None:
    index = int(delta.get("index") or 0)
    while len(calls) <= index:
        calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index]
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if isinstance(function.get("arguments"), str):
        call["function"]["arguments"] += function["arguments"]
