"""Our routing: ordered fallbacks, retries, weighted choice, timeouts (in adapters) and cooldown.

For each request the router fixes an order of deployments once, then walks it: each deployment gets
1 + retries tries on retryable errors, then the next one is tried. Nothing is picked at random after the
first choice, so a broken deployment is never tried again while a healthy one is left: a fallback is
deterministic. A deployment that failed `allowed_fails` times in a row cools down for `cooldown_s` and
goes to the back of the order (still tried when nothing else is left).

Streams fall back only before their first chunk; after it, a failure reaches the caller mid-stream and
counts as a failure of that deployment (its attempt is logged failed, and it moves toward cooldown).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from gateway.errors import UpstreamError
from gateway.monitoring import tracing
from gateway.providers import Adapters
from gateway.providers.base import Adapter
from gateway.providers.deployment import Deployment
from gateway.routing.spec import RouterSpec, WeightedStrategy
from gateway.shapes import ArtifactRef, ChunkStream, Json, chunk_stream


@dataclass(slots=True)
class Attempt:
    deployment: str
    ok: bool
    ms: float
    error: str | None = None
    status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"deployment": self.deployment, "ok": self.ok, "ms": round(self.ms, 3)}
        if self.error:
            out["error"] = self.error
        if self.status:
            out["status"] = self.status
        return out


@dataclass(slots=True)
class _Health:
    fails: int = 0
    cooldown_until: float = 0.0


@dataclass(slots=True)
class RouteResult:
    deployment: Deployment
    attempts: list[Attempt] = field(default_factory=list)
    native: bool = False  # the answer came from the deployment's own /responses (Router.chat `native`)


class Router:
    """A router version at run time: its spec, identity, and the health of its deployments."""

    def __init__(
        self,
        spec: RouterSpec,
        *,
        version: int,
        content_hash: str,
        adapters: Adapters,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.version = version
        self.content_hash = content_hash
        self.adapters = adapters
        self._clock = clock
        self._rng = rng or random.Random()
        self._health: dict[str, _Health] = {d.id: _Health() for d in spec.deployments}
        self.ref = ArtifactRef("router", spec.name, version, content_hash)

    @property
    def name(self) -> str:
        return self.spec.name

    def order(self) -> list[Deployment]:
        deployments = list(self.spec.deployments)
        if isinstance(self.spec.strategy, WeightedStrategy) and len(deployments) > 1:
            first = self._rng.choices(deployments, weights=[d.weight for d in deployments], k=1)[0]
            rest = sorted((d for d in deployments if d is not first), key=lambda d: -d.weight)
            deployments = [first, *rest]
        now = self._clock()
        healthy = [d for d in deployments if self._health[d.id].cooldown_until <= now]
        cooling = [d for d in deployments if self._health[d.id].cooldown_until > now]
        return healthy + cooling

    def _tries(self, deployment: Deployment) -> int:
        return 1 + (deployment.retries if deployment.retries is not None else self.spec.retries)

    def _succeeded(self, deployment: Deployment) -> None:
        health = self._health[deployment.id]
        health.fails = 0
        health.cooldown_until = 0.0

    def _failed(self, deployment: Deployment) -> None:
        health = self._health[deployment.id]
        health.fails += 1
        if health.fails >= self.spec.allowed_fails and self.spec.cooldown_s > 0:
            health.cooldown_until = self._clock() + self.spec.cooldown_s

    async def _walk(
        self,
        result: RouteResult,
        call: Callable[[Adapter, Deployment], Awaitable[Any]],
        operation: str = "chat",
    ) -> Any:
        last: UpstreamError | None = None
        for deployment in self.order():
            adapter = self.adapters.for_deployment(deployment)
            result.deployment = deployment  # on failure, the log names the last deployment tried
            for _ in range(self._tries(deployment)):
                started = time.perf_counter()
                try:
                    with tracing.attempt(deployment, operation) as span:
                        value = await call(adapter, deployment)
                        tracing.answered(span, value)
                except UpstreamError as exc:
                    ms = (time.perf_counter() - started) * 1000
                    result.attempts.append(Attempt(deployment.id, False, ms, exc.code, exc.upstream_status))
                    if not exc.retryable:
                        raise
                    self._failed(deployment)
                    last = exc
                    if exc.upstream_status in (401, 403):
                        break  # a credential problem will not fix itself on a retry
                    continue
                result.attempts.append(Attempt(deployment.id, True, (time.perf_counter() - started) * 1000))
                self._succeeded(deployment)
                return value
        assert last is not None
        raise _final_error(last, result.attempts)

    async def chat(
        self, body: Json, result: RouteResult | None = None, *, native: Json | None = None
    ) -> tuple[Json, RouteResult]:
        """`result`, when given, collects the attempts even if every deployment fails (for the log).
        `native`: the Responses API body, for deployments that serve it natively (`responses: native` and an
        adapter with `responses`); the others get the chat `body`. Either way the answer is chat-shaped."""
        result = result or RouteResult(self.spec.deployments[0])

        def one(adapter: Adapter, dep: Deployment) -> Awaitable[Json]:
            native_call = getattr(adapter, "responses", None)
            if native is not None and dep.responses == "native" and native_call is not None:
                result.native = True
                return cast(Awaitable[Json], native_call(dep, native))
            result.native = False
            return adapter.chat(dep, body)

        value = await self._walk(result, one)
        return value, result

    async def embed(self, body: Json, result: RouteResult | None = None) -> tuple[Json, RouteResult]:
        result = result or RouteResult(self.spec.deployments[0])
        value = await self._walk(result, lambda adapter, dep: adapter.embed(dep, body), "embeddings")
        return value, result

    async def open_stream(
        self, body: Json, result: RouteResult | None = None
    ) -> tuple[Json, ChunkStream, RouteResult]:
        """Fall back until a deployment yields its first chunk; return it with the rest of the stream."""
        result = result or RouteResult(self.spec.deployments[0])

        async def first_chunk(adapter: Adapter, dep: Deployment) -> tuple[Json, AsyncIterator[Json]]:
            stream = adapter.chat_stream(dep, body)
            try:
                chunk = await anext(stream)
            except StopAsyncIteration as exc:
                raise UpstreamError(f"deployment {dep.id!r} sent an empty stream", deployment=dep.id) from exc
            except BaseException:
                await _aclose(stream)
                raise
            return chunk, stream

        first, rest = await self._walk(result, first_chunk)
        return first, chunk_stream(rest), result

    def failed_mid_stream(self, result: RouteResult, error: UpstreamError) -> None:
        """A stream broke off after its first chunk: that is its deployment's failure (its attempt is
        marked failed, and the deployment moves toward cooldown), though it is too late to fall back."""
        self._failed(result.deployment)
        if result.attempts:
            attempt = result.attempts[-1]
            attempt.ok, attempt.error, attempt.status = False, error.code, error.upstream_status


async def _aclose(stream: AsyncIterator[Json]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _final_error(last: UpstreamError, attempts: list[Attempt]) -> UpstreamError:
    """Every deployment failed: report the last error, naming how many tries were made."""
    tried = sorted({a.deployment for a in attempts})
    last.message = f"{last.message} (after {len(attempts)} attempt(s) on {', '.join(tried)})"
    last.args = (last.message,)
    return last
