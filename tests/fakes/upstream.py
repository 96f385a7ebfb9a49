"""A real OpenAI-compatible HTTP server for tests, with fault modes chosen by URL: `/<mode>/v1/...`.

Each deployment in a router file can point at a different mode of the same server. A mode is
`<name>[-<arg>...]`; arguments a mode does not use are free tags, so `500-a` and `500-b` are two
independent broken upstreams (counters and records are kept per full mode string).

    ok            answers: chat echoes "echo: <last user message>" with correct usage (tiktoken
                  cl100k_base, OpenAI's message framing), streams one chunk per word; embeddings
                  (float or base64, 8 dims, unit length); models; responses (OpenAI's Responses API:
                  "echo: <last user input>" with a reasoning item, as a provider serving it natively)
    nousage       answers without any usage (the gateway must count tokens itself)
    <status>      e.g. 500, 503, 400, 401, 429 (with `Retry-After: 7`; `429-bare` without it): that
                  status, OpenAI error JSON
    slow-<ms>     sleeps, then answers
    reset         closes the connection abruptly (TCP RST) before any byte
    cut-<n>       streams n content chunks, then drops the connection (non-streaming: a cut body)
    errevent-<n>  streams n content chunks, then `data: {"error": ...}` (non-streaming: 500)
    flaky-<k>     the first k requests to this exact mode fail with 500, then it answers
    drip-<ms>     streams like ok, sleeping ms before each word chunk (a slow generator)
    tools         with `tools` in the request and no tool result yet: calls the first function with
                  arguments {"query": <last user message>} (finish_reason tool_calls; streamed as an id
                  chunk then the arguments in three pieces); after a `tool` message: answers
                  "tool said: <its content>"; otherwise like ok

Add a mode with `upstream.add_mode(name, handler)`: the handler gets a `Hit` and returns a response,
or None to answer normally (`await hit.reply(content=...)` builds the normal answer with any text).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

Json = dict[str, Any]
ModeHandler = Callable[["Hit"], Awaitable[web.StreamResponse | None]]

RETRY_AFTER_S = 7
EMBED_DIMS = 8
UPSTREAM_MODEL = "fake-model"


@functools.cache
def _encoding() -> Any:
    import tiktoken

    return tiktoken.get_encoding("cl100k_base")


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(messages: list[Any]) -> int:
    """OpenAI's accounting (its cookbook): per message 3 tokens plus its role, text and name (+1 for a
    name); 3 to prime the reply."""
    total = 3
    for m in messages:
        total += 3 + count_tokens(message_text(m)) + count_tokens(str(m.get("role") or ""))
        if m.get("name"):
            total += 1 + count_tokens(str(m["name"]))
    return total


def echo_text(body: Json) -> str:
    users = [m for m in body.get("messages") or () if isinstance(m, dict) and m.get("role") == "user"]
    return "echo: " + (message_text(users[-1]) if users else "")


def fake_vector(text: str) -> list[float]:
    raw = hashlib.sha256(text.encode()).digest()[:EMBED_DIMS]
    values = [b - 127.5 for b in raw]
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values]


@dataclass
class Hit:
    """One request received: what a mode handler needs to decide its answer."""

    request: web.Request
    upstream: FakeUpstream
    mode: str
    name: str
    args: list[str]
    endpoint: str
    body: Json
    count: int  # 1 for the first request to this exact mode since the last clear()

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    def int_arg(self, default: int) -> int:
        return int(self.args[0]) if self.args and self.args[0].isdigit() else default

    async def reply(self, content: str | None = None, *, usage: bool = True) -> web.StreamResponse:
        """The normal answer for this endpoint; `content` replaces the echo text of a chat answer."""
        if self.endpoint == "models":
            return json_response({"object": "list", "data": [model_card()]})
        if self.endpoint == "embeddings":
            return json_response(embeddings_answer(self.body, usage=usage))
        if self.endpoint == "responses":  # OpenAI's Responses API, for deployments that serve it natively
            return json_response(responses_answer(self.body))
        if self.endpoint != "chat/completions":
            return error_response(404, f"no endpoint {self.endpoint}")
        text = echo_text(self.body) if content is None else content
        if self.stream:
            return await self.stream_reply(text, usage=usage)
        return json_response(chat_answer(self.body, text, usage=usage))

    async def stream_reply(
        self,
        text: str,
        *,
        usage: bool = True,
        stop_after: int | None = None,
        then: str = "finish",
        delay_s: float = 0.0,
    ) -> web.StreamResponse:
        """SSE: a role chunk, one chunk per word, finish, usage if asked, [DONE].

        `stop_after=n` sends only n word chunks, then `then`: "cut" drops the connection, "error"
        sends an error event and ends the body.
        """
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(self.request)
        meta = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": UPSTREAM_MODEL,
        }

        async def send(data: Any) -> None:
            await resp.write(b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n")

        await send({**meta, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        words = split_words(text)
        for i, word in enumerate(words):
            if stop_after is not None and i >= stop_after:
                break
            if delay_s:
                await asyncio.sleep(delay_s)
            await send({**meta, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
        if stop_after is not None:
            if then == "cut":
                drop_connection(self.request, rst=False)
                return resp
            await send(
                {
                    "error": {
                        "message": "the fake upstream failed mid-stream",
                        "type": "server_error",
                        "param": None,
                        "code": "fake_midstream",
                    }
                }
            )
            await resp.write_eof()
            return resp
        await send({**meta, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        options = self.body.get("stream_options") or {}
        if usage and options.get("include_usage"):
            await send({**meta, "choices": [], "usage": usage_of(self.body, text)})
        await send(b"[DONE]")
        await resp.write_eof()
        return resp


def split_words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def usage_of(body: Json, text: str) -> Json:
    p, c = prompt_tokens(list(body.get("messages") or [])), count_tokens(text)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def chat_answer(body: Json, text: str, *, usage: bool = True) -> Json:
    data: Json = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    if usage:
        data["usage"] = usage_of(body, text)
    return data


def responses_answer(body: Json) -> Json:
    """A Responses API answer echoing the last user input, with a reasoning item and fields of the
    Responses API that a bridge through chat completions would not have (service_tier, reasoning tokens)."""
    raw = body.get("input")
    if isinstance(raw, str):
        said = raw
    else:
        users = [i for i in raw or () if isinstance(i, dict) and i.get("role") == "user"]
        said = message_text(users[-1]) if users else ""
    text = "echo: " + said
    tokens_in, tokens_out = count_tokens(said) + 3, count_tokens(text)
    return {
        "id": "resp_upstream_" + hashlib.sha256(text.encode()).hexdigest()[:16],
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": UPSTREAM_MODEL,
        "output": [
            {"id": "rs_fake_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
            {"id": "msg_fake_1", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": text, "annotations": []}]},
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "service_tier": "default",
        "store": bool(body.get("store", True)),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {"input_tokens": tokens_in, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": tokens_out, "output_tokens_details": {"reasoning_tokens": 5},
                  "total_tokens": tokens_in + tokens_out},
        "user": None,
        "metadata": {},
    }  # fmt: skip


def embeddings_answer(body: Json, *, usage: bool = True) -> Json:
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else [str(t) for t in raw or ()]
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vec = fake_vector(text)
        emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    out: Json = {"object": "list", "data": data, "model": UPSTREAM_MODEL}
    if usage:
        tokens = sum(count_tokens(t) for t in texts)
        out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return out


def model_card() -> Json:
    return {"id": UPSTREAM_MODEL, "object": "model", "created": 0, "owned_by": "fake-upstream"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = (
        "rate_limit_error" if status == 429 else "invalid_request_error" if status < 500 else "server_error"
    )
    body = {"error": {"message": message, "type": kind, "param": None, "code": f"fake_{status}"}}
    return json_response(body, status, headers)


def drop_connection(request: web.Request, *, rst: bool) -> None:
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()  # flushes what was written, then FIN: a body cut short


# -- modes ----------------------------------------------------------------------------------------------


async def mode_ok(hit: Hit) -> web.StreamResponse | None:
    return None


async def mode_nousage(hit: Hit) -> web.StreamResponse | None:
    return await hit.reply(usage=False)


async def mode_status(hit: Hit) -> web.StreamResponse | None:
    status = int(hit.name)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 and "bare" not in hit.args else None
    return error_response(status, f"the fake upstream answers {status} (mode {hit.mode})", headers)


async def mode_slow(hit: Hit) -> web.StreamResponse | None:
    await asyncio.sleep(hit.int_arg(1000) / 1000)
    return None


async def mode_reset(hit: Hit) -> web.StreamResponse | None:
    drop_connection(hit.request, rst=True)
    return web.Response()  # written to a closed transport: nothing is sent


async def mode_cut(hit: Hit) -> web.StreamResponse | None:
    if hit.stream:
        return await hit.stream_reply(echo_text(hit.body), stop_after=hit.int_arg(1), then="cut")
    body = orjson.dumps(chat_answer(hit.body, echo_text(hit.body)))
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(hit.request)
    await resp.write(body[: len(body) // 2])
    drop_connection(hit.request, rst=False)
    return resp


async def mode_errevent(hit: Hit) -> web.StreamResponse | None:
    if hit.stream:
        return await hit.stream_reply(echo_text(hit.body), stop_after=hit.int_arg(1), then="error")
    return error_response(500, "the fake upstream failed")


async def mode_flaky(hit: Hit) -> web.StreamResponse | None:
    if hit.count <= hit.int_arg(1):
        return error_response(500, f"flaky failure {hit.count} of {hit.int_arg(1)}")
    return None


async def mode_drip(hit: Hit) -> web.StreamResponse | None:
    if not hit.stream:
        return None
    return await hit.stream_reply(echo_text(hit.body), delay_s=hit.int_arg(100) / 1000)


TOOL_CALL_ID = "call_fake_1"


def tool_call_arguments(body: Json) -> str:
    return orjson.dumps({"query": echo_text(body).removeprefix("echo: ")}).decode()


async def mode_tools(hit: Hit) -> web.StreamResponse | None:
    messages = [m for m in hit.body.get("messages") or () if isinstance(m, dict)]
    tools = hit.body.get("tools") or []
    if hit.endpoint != "chat/completions" or not tools:
        return None
    if messages and messages[-1].get("role") == "tool":
        return await hit.reply(content=f"tool said: {message_text(messages[-1])}")
    name = tools[0]["function"]["name"]
    arguments = tool_call_arguments(hit.body)
    if not hit.stream:
        data = chat_answer(hit.body, "")
        data["choices"][0] = {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
        data["usage"] = usage_of(hit.body, arguments)
        return json_response(data)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(hit.request)
    meta = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": UPSTREAM_MODEL}
    third = max(1, len(arguments) // 3)
    pieces = [arguments[:third], arguments[third : 2 * third], arguments[2 * third :]]
    first_call = {
        "index": 0,
        "id": TOOL_CALL_ID,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    chunks: list[Json] = [{"role": "assistant", "content": None, "tool_calls": [first_call]}]
    chunks += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
    for delta in chunks:
        data = {**meta, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        await resp.write(b"data: " + orjson.dumps(data) + b"\n\n")
    end = {**meta, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    await resp.write(b"data: " + orjson.dumps(end) + b"\n\n")
    if (hit.body.get("stream_options") or {}).get("include_usage"):
        usage = {**meta, "choices": [], "usage": usage_of(hit.body, arguments)}
        await resp.write(b"data: " + orjson.dumps(usage) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


DEFAULT_MODES: dict[str, ModeHandler] = {
    "tools": mode_tools,
    "ok": mode_ok,
    "nousage": mode_nousage,
    "slow": mode_slow,
    "reset": mode_reset,
    "cut": mode_cut,
    "errevent": mode_errevent,
    "flaky": mode_flaky,
    "drip": mode_drip,
}


# -- the server -----------------------------------------------------------------------------------------


class FakeUpstream:
    """The server, run on its own event loop in a background thread."""

    def __init__(self) -> None:
        self.modes: dict[str, ModeHandler] = dict(DEFAULT_MODES)
        self.requests: list[Json] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-upstream", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0
        # A bound socket that never listens: connecting to it is refused, and no one else can take the port.
        self._refused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._refused.bind(("127.0.0.1", 0))
        self.refused_url = f"http://127.0.0.1:{self._refused.getsockname()[1]}/v1"

    # public API

    def url(self, mode: str = "ok") -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def add_mode(self, name: str, handler: ModeHandler) -> None:
        self.modes[name] = handler

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self._counts.clear()

    def hits(self, mode: str | None = None, endpoint: str | None = None) -> list[Json]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (mode is None or r["mode"] == mode) and (endpoint is None or r["endpoint"] == endpoint)
            ]

    def count(self, mode: str) -> int:
        return len(self.hits(mode))

    # life cycle

    def start(self) -> FakeUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._refused.close()

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{mode}/v1/{endpoint:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = request.match_info["mode"]
        endpoint = request.match_info["endpoint"].strip("/")
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return error_response(400, "the fake upstream got invalid JSON")
        name, *args = mode.split("-")
        with self._lock:
            count = self._counts.get(mode, 0) + 1
            self._counts[mode] = count
            self.requests.append(
                {
                    "path": request.path,
                    "mode": mode,
                    "endpoint": endpoint,
                    "method": request.method,
                    "headers": {k.lower(): v for k, v in request.headers.items()},
                    "json": body,
                    "stream": bool(isinstance(body, dict) and body.get("stream")),
                    "time": time.monotonic(),
                }
            )
        hit = Hit(request, self, mode, name, args, endpoint, body if isinstance(body, dict) else {}, count)
        handler = mode_status if name.isdigit() else self.modes.get(name)
        if handler is None:
            return error_response(404, f"the fake upstream has no mode {name!r}")
        response = await handler(hit)
        return response if response is not None else await hit.reply()
