"""What a gateway serves, cached in memory: keys, every artifact version, and every alias.

The request path reads only this snapshot (dict lookups), never the database. A poller reads the
generation counter every `refresh_interval_s` (one indexed row) and rebuilds the snapshot when another
process changed keys, versions or aliases, so a change reaches every replica within that interval.
Run-time objects built from a version (routers with their deployment health, parsed prompt specs) are
kept across refreshes: versions are immutable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from gateway.db.generation import read_generation, utcnow
from gateway.db.models import Alias, ArtifactVersion
from gateway.db.outage import Outage
from gateway.errors import ModelNotFound, NotFound
from gateway.keys import KeyService, Principal, hash_key
from gateway.prompts.spec import PromptSpec
from gateway.providers import Adapters
from gateway.registry.refs import DEFAULT_ALIAS
from gateway.registry.store import VersionRecord, to_record
from gateway.rollouts.service import Assignment, LiveRollout, load_live
from gateway.routing.router import Router
from gateway.routing.spec import RouterSpec

log = logging.getLogger("opsgate.catalog")


@dataclass(frozen=True)
class Snapshot:
    generation: int = -1
    principals: dict[str, Principal] = field(default_factory=dict)
    aliases: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    records: dict[tuple[str, str, int], VersionRecord] = field(default_factory=dict)
    rollouts: dict[tuple[str, str, str], LiveRollout] = field(default_factory=dict)  # (kind, name, alias)


class Catalog:
    def __init__(self, engine: Engine, adapters: Adapters, *, refresh_interval_s: float) -> None:
        self.engine = engine
        self.adapters = adapters
        self.refresh_interval_s = refresh_interval_s
        self.keys = KeyService(engine)
        self.snapshot = Snapshot()
        self._routers: dict[tuple[str, int, str], Router] = {}
        self._specs: dict[tuple[str, str, int, str], Any] = {}
        self._task: asyncio.Task[None] | None = None
        self.listeners: list[Any] = []  # callables(snapshot) run after each refresh (e.g. index caches)
        self.outage = Outage("catalog refresh: database", log)

    # -- lookups (request path: memory only) ------------------------------------------------------------

    def principal(self, token: str) -> Principal | None:
        return self.snapshot.principals.get(hash_key(token))

    def has(self, kind: str, name: str) -> bool:
        return (kind, name) in self.snapshot.aliases

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self.snapshot.aliases if k == kind)

    def aliases_of(self, kind: str, name: str) -> dict[str, int]:
        return dict(self.snapshot.aliases.get((kind, name), {}))

    def resolve(self, kind: str, name: str, selector: str | None = None) -> VersionRecord:
        """A version by number or alias (default: production). 404 naming what exists."""
        aliases = self.snapshot.aliases.get((kind, name))
        if aliases is None:
            raise ModelNotFound(f"{kind}:{name} does not exist in the registry", param="model")
        if selector is None or not selector.isdigit():
            alias = selector or DEFAULT_ALIAS
            version = aliases.get(alias)
            if version is None:
                known = ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items()))
                raise ModelNotFound(
                    f"{kind}:{name} has no alias {alias!r} (aliases: {known}); promote a version to it or"
                    f" ask for {kind}:{name}@latest or a version number",
                    param="model",
                )
        else:
            version = int(selector)
        record = self.snapshot.records.get((kind, name, version))
        if record is None:
            raise ModelNotFound(f"{kind}:{name}@{version} does not exist", param="model")
        return record

    def resolve_for(
        self, kind: str, name: str, selector: str | None, caller: str
    ) -> tuple[VersionRecord, Assignment | None]:
        """`resolve`, where an alias under a live rollout serves the caller's arm: returns the record
        and the assignment (rollout, arm), or None when no rollout applies (a version number never does)."""
        if selector is not None and selector.isdigit():
            return self.resolve(kind, name, selector), None
        live = self.snapshot.rollouts.get((kind, name, selector or DEFAULT_ALIAS))
        if live is None:
            return self.resolve(kind, name, selector), None
        version, arm = live.version_for(caller, utcnow())
        return self.resolve(kind, name, str(version)), Assignment(live, arm)

    def find(self, kind: str, name: str, selector: str | None = None) -> VersionRecord | None:
        """`resolve`, or None when there is no such version."""
        try:
            return self.resolve(kind, name, selector)
        except NotFound:
            return None

    def router_for(self, record: VersionRecord) -> Router:
        key = (record.name, record.version, record.content_hash)
        router = self._routers.get(key)
        if router is None:
            spec = RouterSpec.model_validate(record.spec)
            router = Router(
                spec, version=record.version, content_hash=record.content_hash, adapters=self.adapters
            )
            self._routers[key] = router
        return router

    def router(self, name: str, selector: str | None = None) -> Router | None:
        record = self.find("router", name, selector)
        return self.router_for(record) if record is not None else None

    def spec_for(self, record: VersionRecord, cls: type[Any]) -> Any:
        key = (record.kind, record.name, record.version, record.content_hash)
        spec = self._specs.get(key)
        if spec is None:
            spec = cls.model_validate(record.spec)
            self._specs[key] = spec
        return spec

    def prompt_spec(self, record: VersionRecord) -> PromptSpec:
        spec: PromptSpec = self.spec_for(record, PromptSpec)
        return spec

    # -- loading -------------------------------------------------------------------------------------

    def load(self) -> Snapshot:
        """Build a fresh snapshot from the database (blocking; called in a thread)."""
        with Session(self.engine) as s:
            generation = read_generation(s)
            records = {(r.kind, r.name, r.version): to_record(r) for r in s.scalars(select(ArtifactVersion))}
            aliases: dict[tuple[str, str], dict[str, int]] = {}
            for row in s.scalars(select(Alias)):
                aliases.setdefault((row.kind, row.name), {})[row.alias] = row.version
            rollouts = load_live(s)
        principals = self.keys.active_principals()
        return Snapshot(generation, principals, aliases, records, rollouts)

    async def refresh(self) -> None:
        self.snapshot = await asyncio.to_thread(self.load)
        for listener in self.listeners:
            listener(self.snapshot)

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
            except Exception as exc:  # noqa: BLE001 - one line per change of state, not a traceback per poll
                self.outage.failed(exc, "serving the cached keys, aliases and artifacts")
            else:
                self.outage.recovered()
