"""Counters for rate limits and budgets: in-process by default, Redis when `OPSGATE_REDIS_URL` is set.

A request's charges (every rate bucket and budget ledger it draws on) are decided together and
atomically: all pass and are all taken, or the first hard one that fails refuses the request and
nothing is taken. In-process that is a plain function run without an await on the event loop; in Redis
it is one Lua script (one round trip, atomic across gateway replicas, clock from Redis `TIME`).

Rate limits are GCRA (a token bucket held as one number, the "theoretical arrival time"): `limit` units
per `window_s`, with a burst of up to `limit`. A request charges its estimate now; `settle` adds the
difference once the true count is known (a debt delays later requests; a refund frees room).

Budgets are ledgers of nano-USD per period: `spent` (settled) and `reserved` (estimates of requests in
flight). A request is admitted only if spent + reserved + its estimate <= limit; settling releases the
estimate and adds the true cost. A crashed replica's reservations stay until the period's key expires:
that can only refuse more, never spend more.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import NoScriptError, RedisError

from gateway.db.outage import Outage, describe
from gateway.policy.base import Charge, Grant, Refusal
from gateway.policy.redis_client import RespConnection

log = logging.getLogger("opsgate.policy.quota")
BUDGET_GRACE_S = 86_400  # keep a ledger a day past its period (for inspection), then let it expire
SETTLE_BATCH = 256  # settlements per Redis script call


@dataclass(slots=True)
class Settlement:
    charge: Charge
    actual: int  # true units (tokens or nano-USD) to replace the charged estimate


class QuotaStore(Protocol):
    backend: str

    async def acquire(self, charges: list[Charge]) -> Grant: ...

    def settle(self, settlements: list[Settlement]) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


# -- in-process ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Ledger:
    spent: int = 0
    reserved: int = 0
    expires: float = 0.0


class MemoryStore:
    """One process's counters. Budgets survive restarts when seeded from the request log at start-up."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.buckets: dict[str, float] = {}  # counter -> theoretical arrival time (epoch s)
        self.ledgers: dict[str, _Ledger] = {}
        self._ops = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def state(self) -> dict[str, Any]:
        return {"backend": self.backend, "up": True}

    async def acquire(self, charges: list[Charge]) -> Grant:
        return self.acquire_now(charges)

    def acquire_now(self, charges: list[Charge]) -> Grant:
        now = self.clock()
        grant = Grant()
        updates: list[tuple[Charge, float]] = []
        for charge in charges:
            ok, value, retry = self._try(charge, now)
            if ok:
                updates.append((charge, value))
            elif charge.soft:
                grant.over.append(charge)
                updates.append((charge, value))
            else:
                grant.refusal = Refusal(charge, retry)
                return grant
        for charge, value in updates:
            if charge.kind == "rate":
                self.buckets[charge.counter] = value
            else:
                ledger = self.ledgers.setdefault(charge.counter, _Ledger())
                ledger.reserved += charge.amount
                ledger.expires = charge.period_end + BUDGET_GRACE_S
        self._ops += 1
        if self._ops % 4096 == 0:
            self._expire(now)
        return grant

    def _try(self, charge: Charge, now: float) -> tuple[bool, float, float]:
        """(fits, new state value, retry-after seconds)."""
        if charge.kind == "rate":
            tat = max(self.buckets.get(charge.counter, now), now)
            new = tat + charge.amount * charge.window_s / charge.limit
            late = new - now - charge.window_s
            return late <= 0, new, max(late, 0.0)
        ledger = self.ledgers.get(charge.counter) or _Ledger()
        fits = ledger.spent < charge.limit and ledger.spent + ledger.reserved + charge.amount <= charge.limit
        return fits, 0.0, max(charge.period_end - now, 1.0)

    def settle(self, settlements: list[Settlement]) -> None:
        now = self.clock()
        for s in settlements:
            charge = s.charge
            if charge.kind == "rate":
                tat = self.buckets.get(charge.counter)
                delta = s.actual - charge.amount
                if delta > 0:
                    tat = max(tat or now, now)
                elif tat is None:
                    continue
                self.buckets[charge.counter] = tat + delta * charge.window_s / charge.limit
            else:
                ledger = self.ledgers.setdefault(
                    charge.counter, _Ledger(expires=charge.period_end + BUDGET_GRACE_S)
                )
                ledger.reserved = max(0, ledger.reserved - charge.amount)
                ledger.spent += s.actual

    def add_spent(self, counter: str, amount: int, period_end: float) -> None:
        """Seed a ledger (spend already recorded in the request log before this process started)."""
        ledger = self.ledgers.setdefault(counter, _Ledger())
        ledger.spent += amount
        ledger.expires = period_end + BUDGET_GRACE_S

    def _expire(self, now: float) -> None:
        for key in [k for k, tat in self.buckets.items() if tat < now]:
            del self.buckets[key]
        for key in [k for k, led in self.ledgers.items() if led.expires < now and not led.reserved]:
            del self.ledgers[key]


# -- Redis --------------------------------------------------------------------------------------------

# KEYS: one per charge. ARGV: for each charge, 5 values: kind ('r' rate | 'b' budget), limit, amount,
# span (rate: window in ms; budget: period end in epoch ms), soft ('1' | '0').
# Returns {refused index (0: none), retry-after ms, soft indexes over their limit...}.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local refused, retry = 0, 0
local over, news = {}, {}
for i = 1, n do
  local b = (i - 1) * 5
  local kind, limit, amount = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local span, soft = tonumber(ARGV[b + 4]), ARGV[b + 5] == '1'
  local fits, value, wait
  if kind == 'r' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    value = tat + amount * span / limit
    wait = value - now - span
    fits = wait <= 0
  else
    local v = redis.call('HMGET', KEYS[i], 's', 'r')
    local spent, reserved = tonumber(v[1] or '0'), tonumber(v[2] or '0')
    fits = spent < limit and spent + reserved + amount <= limit
    value = amount
    wait = math.max(span - now, 1000)
  end
  if fits or soft then
    news[i] = value
    if not fits then over[#over + 1] = i end
  elseif refused == 0 then
    refused, retry = i, wait
    break
  end
end
if refused > 0 then return {refused, math.ceil(retry)} end
for i = 1, n do
  local b = (i - 1) * 5
  if ARGV[b + 1] == 'r' then
    local ttl = math.ceil(news[i] - now) + 1000
    redis.call('SET', KEYS[i], string.format('%.3f', news[i]), 'PX', ttl)
  else
    -- amounts go to Redis as the caller's integer strings: a Lua number may print as -0 or 1e+15
    if ARGV[b + 3] ~= '0' then redis.call('HINCRBY', KEYS[i], 'r', ARGV[b + 3]) end
    redis.call('PEXPIREAT', KEYS[i], tonumber(ARGV[b + 4]) + %(grace_ms)d)
  end
end
local out = {0, 0}
for _, i in ipairs(over) do out[#out + 1] = i end
return out
""".replace("%(grace_ms)d", str(BUDGET_GRACE_S * 1000))

# KEYS: one per settlement. ARGV: for each, 5 values: kind, limit, estimate, actual, span (as above).
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local b = (i - 1) * 5
  local kind, limit = ARGV[b + 1], tonumber(ARGV[b + 2])
  local estimate, actual, span = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  if kind == 'r' then
    local delta = actual - estimate
    local raw = redis.call('GET', KEYS[i])
    local tat = raw and tonumber(raw) or nil
    if delta > 0 or tat then
      if delta > 0 and (not tat or tat < now) then tat = now end
      tat = tat + delta * span / limit
      local ttl = math.max(math.ceil(tat - now), 0) + 1000
      redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', ttl)
    end
  else
    if ARGV[b + 3] ~= '0' then
      local reserved = redis.call('HINCRBY', KEYS[i], 'r', '-' .. ARGV[b + 3])
      if reserved < 0 then redis.call('HSET', KEYS[i], 'r', 0) end
    end
    if ARGV[b + 4] ~= '0' then redis.call('HINCRBY', KEYS[i], 's', ARGV[b + 4]) end
    redis.call('PEXPIREAT', KEYS[i], span + %(grace_ms)d)
  end
end
return 0
""".replace("%(grace_ms)d", str(BUDGET_GRACE_S * 1000))


SHAS = {script: hashlib.sha1(script.encode()).hexdigest() for script in (ACQUIRE, SETTLE)}


def _span_ms(charge: Charge) -> int:
    return int(charge.window_s * 1000) if charge.kind == "rate" else int(charge.period_end * 1000)


class RedisStore:
    """Counters shared by every gateway on one Redis: one script call to admit; settles batched.

    When Redis fails (refused, reset, timed out), each check that uses it follows the policy's
    `on_store_error` (allow: served, not counted; block: 503 `limit_store_unavailable`). While it is
    down, requests do not wait on it: one call every `probe_s` tries it (the others get the error at
    once), and the first that succeeds ends the outage. One log line per change of state; `state()`
    feeds /readyz and /metrics."""

    backend = "redis"

    def __init__(
        self, url: str, *, prefix: str = "opsgate", timeout_s: float = 1.0, probe_s: float = 0.5
    ) -> None:
        self.url = url
        self.prefix = prefix.rstrip(":") + ":"
        self.client = RespConnection(url, timeout_s=timeout_s)
        self.probe_s = probe_s
        self.outage = Outage(f"limit store: Redis at {self.client.where}", log)
        self.errors = 0  # calls that failed or were not made because Redis was down (all time)
        self._next_probe = 0.0
        self._queue: list[Settlement] = []
        self._flusher: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.outage.up

    def state(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "up": self.outage.up,
            "down_for_s": round(self.outage.down_for_s(), 3),
            "last_error": self.outage.last_error,
            "errors": self.errors,
        }

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.outage.failed(exc, "limits and budgets follow on_store_error")
        self._next_probe = time.monotonic() + self.probe_s

    async def start(self) -> None:
        try:
            await self.client.call("PING")
        except (OSError, TimeoutError, RedisError) as exc:  # start anyway; each call reports it
            self._failed(exc)

    async def stop(self) -> None:
        await self.flush()
        await self.client.aclose()

    async def _script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, and EVAL when Redis does not know the script yet (which also caches it there)."""
        try:
            return await self.client.call("EVALSHA", SHAS[script], len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.call("EVAL", script, len(keys), *keys, *args)

    async def acquire(self, charges: list[Charge]) -> Grant:
        keys = [self.prefix + c.counter for c in charges]
        args: list[Any] = []
        for c in charges:
            args += ["r" if c.kind == "rate" else "b", c.limit, c.amount, _span_ms(c), "1" if c.soft else "0"]
        if not self.outage.up and time.monotonic() < self._next_probe:
            self.errors += 1  # down: do not wait on it; the next probe is due soon
            return Grant(error=f"Redis unavailable: {self.outage.last_error}")
        try:
            reply = await self._script(ACQUIRE, keys, args)
            refused, retry_ms, *over = (int(v) for v in reply)
        except (OSError, TimeoutError, RedisError, ValueError, TypeError) as exc:
            self._failed(exc)
            return Grant(error=describe(exc))
        self.outage.recovered()
        grant = Grant(over=[charges[i - 1] for i in over])
        if refused:
            grant.refusal = Refusal(charges[refused - 1], retry_ms / 1000)
        return grant

    def settle(self, settlements: list[Settlement]) -> None:
        """Off the response path: queued, and sent by one flusher task in batches (one script call
        per batch), so a burst of finished requests costs a few round trips, not one each."""
        self._queue.extend(settlements)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:SETTLE_BATCH], self._queue[SETTLE_BATCH:]
            keys = [self.prefix + s.charge.counter for s in batch]
            args: list[Any] = []
            for s in batch:
                c = s.charge
                args += ["r" if c.kind == "rate" else "b", c.limit, c.amount, s.actual, _span_ms(c)]
            try:
                await self._script(SETTLE, keys, args)
            except (OSError, TimeoutError, RedisError) as exc:  # lost: the counters undercount a little
                self._failed(exc)
