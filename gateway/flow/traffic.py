"""Recording a call in the traffic store: which calls are kept, and what is kept of them.

A call is stored when the caller sent `store: true`, or when config/gateway.yaml `traffic.routers` /
`traffic.prompts` names what it called. What is kept: the caller's body, the body sent upstream and the
answer (a stream's chunks put back together), each redacted of personal data, with the request id of the
call's log row (its lineage: every version that served it). The stored id is the answer's id (for a chat
completion `chatcmpl-<request hex>`), so the caller can read it back through the stored-completions API.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.db.outage import Outage, database_unavailable
from gateway.flow.call import Call
from gateway.shapes import ChunkStream, Json
from gateway.traffic.assemble import ChunkAssembler
from gateway.traffic.config import TrafficConfig
from gateway.traffic.redact import redact_payload
from gateway.traffic.store import StoredCall, TrafficStore

log = logging.getLogger("opsgate.traffic")


def body_digest(body: Json) -> str:
    """sha256 of a body as sent upstream (before redaction): replay compares its rebuilt body with it."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def rendered_digest(messages: Any) -> str:
    """sha256 of the messages sent upstream (the rendered prompt and the caller's messages), before
    redaction: replay checks that it re-renders them byte for byte."""
    return hashlib.sha256(orjson.dumps(messages)).hexdigest()


@dataclass(frozen=True, slots=True)
class Surface:
    """The API a chat call was made through, as the store keeps it: its kind, its ids, and its answer's
    shape (`render(chat completion) -> answer`; chat completions keep the completion as is)."""

    kind: str = "chat.completion"
    id_prefix: str = "chatcmpl-"
    render: Callable[[Json], Json] | None = None
    extra: Callable[[], Json] | None = None  # more to keep (e.g. the conversation a response continues)
    # then, with the answer (e.g. add it to a conversation)
    stored: Callable[[Json], Awaitable[None]] | None = None
    # the body for deployments that serve this API natively (`responses: native`)
    native: Json | None = None


CHAT = Surface()


class TrafficRecorder:
    def __init__(self, store: TrafficStore, config: TrafficConfig) -> None:
        self.store = store
        self.config = config
        self._routers = frozenset(config.routers)
        self._prompts = frozenset(config.prompts)
        # the database away: answers are served unstored, one log line per change of state
        self.outage = Outage("traffic store: database", log)

    def wanted(self, asked: bool | None, router: str, prompt: str | None) -> bool:
        return bool(asked) or router in self._routers or (prompt is not None and prompt in self._prompts)

    def recording(self, call: Call, surface: Surface, request: Json, metadata: Any) -> Recording:
        meta = {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
        return Recording(self.store, call, surface, request, meta, self.outage)


class Recording:
    """One call on its way into the store."""

    def __init__(
        self,
        store: TrafficStore,
        call: Call,
        surface: Surface,
        request: Json,
        metadata: dict[str, str],
        outage: Outage,
    ) -> None:
        self.store = store
        self.outage = outage
        self.call = call
        self.surface = surface
        self.kind = surface.kind
        self.id = surface_id(surface, call)
        self.request = request
        self.metadata = metadata

    async def save(self, upstream: Json, response: Json) -> bool:
        """Store the call (in a thread); the log row's `extra.traffic` says whether it was. With the
        database away the answer is not thrown away: it is served unstored, and the row says why."""
        call = self.call
        surface = self.surface
        answer = surface.render(response) if surface.render is not None else response
        extra = surface.extra() if surface.extra is not None else {}
        kept = {"request": self.request, "upstream": upstream, "response": answer, **extra}
        kept["question"] = call.question
        if call.retrieval is not None:  # the chunks as the prompt's template saw them (replay re-renders)
            kept["contexts"] = call.retrieval.context()
        if surface.render is not None:
            kept["chat"] = {k: v for k, v in response.items() if k != "native_response"}  # as checked
        assert call.principal is not None
        principal = call.principal

        def redact_and_save() -> bool:  # in a thread: 4 MB of many items takes seconds to redact and hash
            payload = redact_payload(kept)
            payload["upstream_sha256"] = body_digest(upstream)
            payload["rendered_sha256"] = rendered_digest(upstream.get("messages"))
            payload["versions"] = [str(ref) for ref in call.artifacts]
            stored = StoredCall(
                self.id, call.request_id, self.kind, call.ts, principal.principal, principal.key_id,
                call.model, self.metadata, payload,
            )  # fmt: skip
            return self.store.save(stored)

        try:
            saved = await asyncio.to_thread(redact_and_save)
        except Exception as exc:
            if database_unavailable(exc) is None:
                raise
            self.outage.failed(exc, "answers are served but not stored until it is back")
            call.extra["traffic"] = {"id": self.id, "stored": False, "reason": "database_unavailable"}
            return False
        self.outage.recovered()
        call.extra["traffic"] = {"id": self.id, "stored": saved} | ({} if saved else {"reason": "too_large"})
        if surface.stored is not None:
            await surface.stored(answer)
        return saved

    def wrap_stream(self, upstream: Json, first: Json, rest: ChunkStream) -> tuple[Json, ChunkStream]:
        """The stream with the stored id on every chunk; once it has ended whole, the call is stored."""
        first["id"] = self.id
        assembler = ChunkAssembler()
        assembler.add(first)
        return first, RecordedStream(self, upstream, assembler, rest)


def surface_id(surface: Surface, call: Call) -> str:
    """The id of the call's answer on its surface: the prefix and the request id's hex (one per request)."""
    return surface.id_prefix + call.request_id.removeprefix("req_")


class RecordedStream:
    def __init__(self, recording: Recording, upstream: Json, assembler: ChunkAssembler, rest: ChunkStream):
        self.recording = recording
        self.upstream = upstream
        self.assembler = assembler
        self.rest = rest

    def __aiter__(self) -> RecordedStream:
        return self

    async def __anext__(self) -> Json:
        try:
            chunk = await anext(self.rest)
        except StopAsyncIteration:
            await self.recording.save(self.upstream, self.assembler.completion())
            raise
        chunk["id"] = self.recording.id
        self.assembler.add(chunk)
        return chunk

    def ready(self) -> bool:
        return self.rest.ready()

    async def aclose(self) -> None:
        await self.rest.aclose()
