"""What a gateway serves, cached in memory: keys, and the live version of every router.

The request path reads only this snapshot (a dict lookup), never the database. A poller reads the
generation counter every `refresh_interval_s` (one indexed row) and rebuilds the snapshot when another
process changed keys, versions or aliases, so a change reaches every replica within that interval.
Routers whose version did not change keep their run-time state (deployment health, cooldowns).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.db.state import read_generation
from gateway.keys import KeyService, Principal, hash_key
from gateway.providers import Adapters
from gateway.registry.specs import RouterSpec
from gateway.registry.store import LATEST, VersionStore
from gateway.routing.router import Router

log = logging.getLogger("opsgate.catalog")
SERVED_ALIAS = "production"


@dataclass(frozen=True)
class Snapshot:
    generation: int = -1
    principals: dict[str, Principal] = field(default_factory=dict)
    routers: dict[str, Router] = field(default_factory=dict)


class Catalog:
    def __init__(self, engine: Engine, adapters: Adapters, *, refresh_interval_s: float) -> None:
        self.engine = engine
        self.adapters = adapters
        self.refresh_interval_s = refresh_interval_s
        self.keys = KeyService(engine)
        self.versions = VersionStore(engine)
        self.snapshot = Snapshot()
        self._router_cache: dict[tuple[str, int], Router] = {}
        self._task: asyncio.Task[None] | None = None

    def principal(self, token: str) -> Principal | None:
        return self.snapshot.principals.get(hash_key(token))

    def router(self, name: str) -> Router | None:
        return self.snapshot.routers.get(name)

    def load(self) -> Snapshot:
        """Build a fresh snapshot from the database (blocking; called in a thread)."""
        with Session(self.engine) as s:
            generation = read_generation(s)
        principals = self.keys.active_principals()
        aliases = self.versions.aliases(kind="router")
        routers: dict[str, Router] = {}
        cache: dict[tuple[str, int], Router] = {}
        for (_, name), names in aliases.items():
            version = names.get(SERVED_ALIAS, names.get(LATEST))
            if version is None:
                continue
            router = self._router_cache.get((name, version))
            if router is None:
                record = self.versions.get("router", name, version)
                if record is None:
                    continue
                spec = RouterSpec.model_validate(record.spec)
                router = Router(
                    spec, version=version, content_hash=record.content_hash, adapters=self.adapters
                )
            cache[(name, version)] = router
            routers[name] = router
        self._router_cache = cache
        return Snapshot(generation, principals, routers)

    async def refresh(self) -> None:
        self.snapshot = await asyncio.to_thread(self.load)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="opsgate-catalog-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _generation(self) -> int:
        with Session(self.engine) as s:
            return read_generation(s)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            try:
                generation = await asyncio.to_thread(self._generation)
                if generation != self.snapshot.generation:
                    await self.refresh()
            except Exception:
                log.exception("catalog refresh failed; serving the cached snapshot")
