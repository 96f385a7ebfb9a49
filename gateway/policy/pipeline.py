"""The policy pipeline: runs the checks that apply to a request before the upstream call and after it.

Entry points, in the order of the request flow (each records its decisions on the call; none reads a
database):

    authorise(call, subject, query)  access rules; the caller's text before it becomes a retrieval query
                                     (PII); and, when `early`, the limits that need no token count (a
                                     RAG request is refused before it retrieves)
    screen_context(call, chunks)     retrieved chunks: redact PII, drop (or flag) injected chunks
    admit(call, payload)             the request as it will go upstream: PII, injection, deny list, token
                                     caps, then every counted limit at once (one store round trip)
    check_chat_output(call, data)    an answer: redact or block PII and denied terms, JSON validity
    wrap_stream(call, first, rest)   the same for a streamed chat completion, across chunk boundaries
    settle(call)                     at finish: true tokens and cost replace the estimates

`pre_call(call, payload)` is authorise + admit for one payload (classic models, tools, tests).
The subject (who calls what) is built once, by the caller of `authorise`, from what the request resolved.

Decision record (one per check and stage, in `call.decisions`, stored with the request log row):
`{"check", "rule", "policy" (content hash, 12 hex), "stage", "verdict", "matched", "us"}` plus `"count"`
when text was redacted or flagged and `"id"` for a named check. Every row, governed by a rule or not,
names the policy version in force in `extra["policy"]` (hash, 12 hex). (Not in `artifacts`: that list is
the lineage of registry versions and the `x-opsgate-versions` header, which clients compare as is.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError, OpsgateError, ServiceUnavailable
from gateway.monitoring import tracing
from gateway.policy.base import (
    Charge,
    Finding,
    Payload,
    PolicyCall,
    PolicyCheck,
    Slot,
    Stage,
    Subject,
    Usage,
)
from gateway.policy.checks.budget import day_period, ledger, month_period, nano_usd
from gateway.policy.payloads import TokenCounter, chat_output, chat_payload, embedding_payload
from gateway.policy.quota import MemoryStore, QuotaStore, Settlement
from gateway.policy.spec import CompiledMatch, LoadedPolicy, PolicySpec, load_policy, spec_model
from gateway.policy.streaming import StreamGuard
from gateway.registry.hashing import content_hash
from gateway.shapes import ChunkStream, Json
from gateway.tokens_cost import encoding_for, prices_for

if TYPE_CHECKING:
    from gateway.routing.router import Router

log = logging.getLogger("opsgate.policy")
ROUTES = {"/v1/chat/completions": "chat", "/v1/embeddings": "embedding"}
MATCH_CACHE_SIZE = 4096


class CompiledPolicy:
    """A loaded policy with its checks built, and a cache of which checks apply to whom."""

    def __init__(self, loaded: LoadedPolicy, checks: Mapping[str, type[PolicyCheck[Any]]]) -> None:
        self.loaded = loaded
        self.hash12 = loaded.short_hash
        self.rules: list[tuple[CompiledMatch, list[PolicyCheck[Any]]]] = []
        for rule in loaded.spec.rules:
            built = [checks[c.type](c, rule.name) for c in rule.checks]
            self.rules.append((CompiledMatch.of(rule.match), built))
        self.tracks_spend = any(c.tracks_spend for _, built in self.rules for c in built)
        self._cache: dict[Subject, tuple[PolicyCheck[Any], ...]] = {}

    def checks_for(self, subject: Subject) -> tuple[PolicyCheck[Any], ...]:
        found = self._cache.get(subject)
        if found is None:
            matched = [c for match, built in self.rules if match.fits(subject) for c in built]
            found = tuple(sorted(matched, key=lambda c: c.phase))  # stable: rule order within a phase
            if len(self._cache) >= MATCH_CACHE_SIZE:
                self._cache.clear()
            self._cache[subject] = found
        return found


@dataclass(slots=True)
class CallState:
    """What the pipeline keeps on a call between its hooks (`call.policy`)."""

    policy: CompiledPolicy
    request: Payload | None = None
    subject: Subject | None = None
    charges: list[tuple[Charge, PolicyCheck[Any]]] = field(default_factory=list)
    admission: list[tuple[Charge, PolicyCheck[Any]]] = field(default_factory=list)  # not yet taken
    guard: StreamGuard | None = None
    settled: bool = False
    uncounted: bool = False  # a shadow call: content checks run, no limit or budget is touched


def subject_of(call: PolicyCall, route: str) -> Subject:
    """Who calls what, from the call's lineage so far (for `pre_call` callers that resolved on the call)."""
    targets = tuple((ref.kind, ref.name) for ref in call.artifacts)
    return Subject.of(call.principal, targets, route)


def decision(
    policy: CompiledPolicy, check: PolicyCheck[Any], stage: Stage, finding: Finding, us: float
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "check": check.type,
        "rule": check.rule,
        "policy": policy.hash12,
        "stage": stage,
        "verdict": finding.verdict,
        "matched": finding.matched,
        "us": round(us, 1),
    }
    if finding.count:
        out["count"] = finding.count
    if check.config.id:
        out["id"] = check.config.id
    return out


class Pipeline:
    def __init__(
        self,
        policy: LoadedPolicy,
        checks: Mapping[str, type[PolicyCheck[Any]]],
        store: QuotaStore | None = None,
        *,
        file: Path | None = None,
        display: str | None = None,
        refresh_interval_s: float = 1.0,
        spend_seed: Callable[[MemoryStore], object] | None = None,
    ) -> None:
        self.checks = dict(checks)
        self.compiled = CompiledPolicy(policy, self.checks)
        self.store: QuotaStore = store or MemoryStore()
        self.file = file
        self.display = display
        self.refresh_interval_s = refresh_interval_s
        self.spend_seed = spend_seed  # fills in-process ledgers from the request log at start
        self.reload_error: str | None = None
        self.tokens = TokenCounter()
        self._stamp = self._file_stamp()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def ungoverned(cls) -> Pipeline:
        """No rules: what a Gateway built without a policy uses (tests, tools)."""
        return cls(LoadedPolicy(PolicySpec(), content_hash(PolicySpec()), "(none)"), {})

    @property
    def policy(self) -> LoadedPolicy:
        return self.compiled.loaded

    def store_state(self) -> dict[str, Any]:
        """The limit store for /readyz and /metrics: backend, up, and what a failure does (`on_store_error`:
        allow = fail open, served and not counted; block = fail closed, 503)."""
        state = self.store.state()
        state["on_store_error"] = self.policy.spec.on_store_error
        return state

    # -- life cycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(_warm_up)
        await self.store.start()
        if self.spend_seed is not None and isinstance(self.store, MemoryStore):
            await asyncio.to_thread(self.spend_seed, self.store)
        if self.file is not None:
            self._task = asyncio.create_task(self._watch(), name="opsgate-policy-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.stop()

    def _file_stamp(self) -> tuple[int, int] | None:
        if self.file is None:
            return None
        try:
            st = self.file.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self._stamp = stamp
                self.reload()

    def follow(
        self, aliases: Mapping[tuple[str, str], Mapping[str, int]], records: Mapping[Any, Any]
    ) -> None:
        """A catalog listener: when `policy:policies@production` moves, apply the version it points at."""
        version = aliases.get(("policy", "policies"), {}).get("production")
        if version is None:
            return
        record = records.get(("policy", "policies", version))
        if record is None or record.content_hash == self.compiled.loaded.hash:
            return
        try:
            parsed = spec_model(self.checks).model_validate(record.spec)
        except ValueError as exc:  # a check plugin missing on this host: keep the policy in force
            self.reload_error = f"policy:policies@{version}: {exc}"
            log.error("policy version not applied, the previous policy stays in force: %s", self.reload_error)
            return
        self.reload_error = None
        self.compiled = CompiledPolicy(
            LoadedPolicy(parsed, content_hash(parsed), f"policy:policies@{version}"), self.checks
        )
        log.info("policy applied: policy:policies@%s (%s)", version, self.compiled.loaded.ref)

    def reload(self) -> bool:
        """Re-read the policy file; on an error keep serving the policy in force (and log why)."""
        assert self.file is not None
        try:
            loaded = load_policy(self.file, self.checks, display=self.display)
        except ConfigError as exc:
            self.reload_error = exc.message
            log.error("policy file not reloaded, the previous policy stays in force: %s", exc.message)
            return False
        self.reload_error = None
        if loaded.hash != self.compiled.loaded.hash:
            self.compiled = CompiledPolicy(loaded, self.checks)
            log.info("policy reloaded: %s (%s)", loaded.source, loaded.ref)
        return True

    # -- before the call ------------------------------------------------------------------------------

    def uncounted(self, call: PolicyCall) -> None:
        """Make `call` one that counts against no limit or budget (a rollout's shadow call): its content
        checks still run and decide, but nothing is taken from or settled in the quota store."""
        call.policy = CallState(self.compiled, uncounted=True)

    def _state(self, call: PolicyCall) -> CallState:
        state = call.policy
        if state is None:
            state = CallState(self.compiled)
            call.policy = state
        assert isinstance(state, CallState)
        return state

    async def check_chat(self, call: PolicyCall, router: Router, body: Json, data: Json) -> None:
        await self.pre_call(call, chat_payload(router, body, data, self.tokens))

    async def check_embedding(self, call: PolicyCall, router: Router, body: Json) -> None:
        await self.pre_call(call, embedding_payload(router, body))

    async def pre_call(self, call: PolicyCall, payload: Payload) -> None:
        """Authorise (subject from the call's lineage) and admit one payload."""
        await self.authorise(call, subject_of(call, payload.kind))
        await self.admit(call, payload)

    async def authorise(
        self,
        call: PolicyCall,
        subject: Subject,
        *,
        query: tuple[list[Any], dict[str, Any]] | None = None,
        early: bool = False,
    ) -> tuple[list[Any], dict[str, Any]] | None:
        """Access rules, then the query screen (when the request will retrieve: `query` is the caller's
        messages and prompt variables), then, when `early`, the limits that need no token count.

        Returns redacted copies of the query's messages and variables to build the retrieval query from
        (an index may embed queries through a remote embeddings router). Raises the first block."""
        state = self._state(call)
        state.subject = subject
        policy = state.policy
        checks = policy.checks_for(subject)
        empty = Payload(subject.route, [])
        for check in checks:
            if check.stage == "authorise":
                self._check_input(call, policy, check, subject, empty, "input")
            state.admission.extend((charge, check) for charge in check.admission_charges(subject))
        screened = self._screen_query(call, state, checks, query) if query is not None else None
        if early and state.admission:
            taken, state.admission = state.admission, []
            await self._take(call, state, taken, {})
        return screened

    def _check_input(
        self,
        call: PolicyCall,
        policy: CompiledPolicy,
        check: PolicyCheck[Any],
        subject: Subject,
        payload: Payload,
        stage: Stage,
    ) -> None:
        started = time.perf_counter()
        finding = check.check_input(subject, payload)
        us = (time.perf_counter() - started) * 1e6
        tracing.check(check, us, finding)
        if finding is not None:
            call.decisions.append(decision(policy, check, stage, finding, us))
            if finding.verdict == "blocked" and finding.error is not None:
                raise finding.error

    async def admit(self, call: PolicyCall, payload: Payload) -> None:
        """Content checks on what goes upstream, then every counted limit (and any admission limit not
        taken yet) in one store round trip. Raises the first block."""
        state = self._state(call)
        policy = state.policy
        subject = state.subject
        assert subject is not None, "authorise before admit"
        state.request = payload
        charges: list[tuple[Charge, PolicyCheck[Any]]] = state.admission
        state.admission = []
        timings: dict[int, float] = {}
        for check in policy.checks_for(subject):
            if check.stage == "authorise":
                continue
            if check.counts_tokens and payload.uncounted_and_large():
                await asyncio.to_thread(payload.input_tokens)  # seconds for 4 MB: never on the event loop
            started = time.perf_counter()
            finding = check.check_input(subject, payload)
            made = check.charges(subject, payload)
            us = (time.perf_counter() - started) * 1e6
            tracing.check(check, us, finding)
            if made:
                charges.extend((charge, check) for charge in made)
                timings[id(check)] = us
            if finding is not None:
                call.decisions.append(decision(policy, check, "input", finding, us))
                if finding.verdict == "blocked" and finding.error is not None:
                    raise finding.error
        if charges:
            await self._take(call, state, charges, timings)

    async def _take(
        self,
        call: PolicyCall,
        state: CallState,
        charges: list[tuple[Charge, PolicyCheck[Any]]],
        timings: dict[int, float],
    ) -> None:
        if state.uncounted:
            return
        charges = _dedupe(charges)
        started = time.perf_counter()
        grant = await self.store.acquire([c for c, _ in charges])
        store_us = (time.perf_counter() - started) * 1e6 / max(1, len({id(c) for _, c in charges}))
        owners: dict[int, PolicyCheck[Any]] = {id(check): check for _, check in charges}
        refused = grant.refusal.charge if grant.refusal else None
        over = {id(c) for c in grant.over}
        error: OpsgateError | None = None
        for key, check in owners.items():
            mine = [c for c, owner in charges if owner is check]
            if grant.error is not None:
                finding = Finding("error", f"{self.store.backend}: {grant.error}"[:300])
            elif refused is not None and any(c is refused for c in mine):
                assert grant.refusal is not None
                error = check.refused(grant.refusal)
                finding = Finding("blocked", refused.what, error)
            elif any(id(c) in over for c in mine):
                finding = Finding("flagged", "; ".join(c.what for c in mine if id(c) in over))
            else:
                finding = Finding("allowed")
            us = timings.get(key, 0.0) + store_us
            call.decisions.append(decision(state.policy, check, "input", finding, us))
        if error is not None:
            raise error
        if grant.error is not None:
            if state.policy.loaded.spec.on_store_error == "block":
                raise _store_unavailable(self.store.backend)
            return
        state.charges.extend(charges)

    def _screen_query(
        self,
        call: PolicyCall,
        state: CallState,
        checks: tuple[PolicyCheck[Any], ...],
        query: tuple[list[Any], dict[str, Any]],
    ) -> tuple[list[Any], dict[str, Any]]:
        messages, variables = query
        screens = [c for c in checks if c.screens_query]
        if not screens:
            return messages, variables
        messages = [dict(m) if isinstance(m, dict) else m for m in messages]
        variables = dict(variables)
        payload = Payload("chat", _query_slots(messages, variables))
        assert state.subject is not None
        for check in screens:
            started = time.perf_counter()
            finding = check.check_input(state.subject, payload)
            us = (time.perf_counter() - started) * 1e6
            tracing.check(check, us, finding)
            if finding is not None and finding.verdict != "allowed":
                call.decisions.append(decision(state.policy, check, "query", finding, us))
                if finding.verdict == "blocked" and finding.error is not None:
                    raise finding.error
        return messages, variables

    def screen_context(self, call: PolicyCall, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Retrieved chunks before they are rendered: redact PII, drop or flag injected chunks."""
        state = self._state(call)
        policy = state.policy
        subject = state.subject
        assert subject is not None, "authorise before screen_context"
        checks = policy.checks_for(subject)
        if not checks or not chunks:
            return chunks
        kept: list[dict[str, Any]] = []
        findings: dict[int, list[Finding]] = {}
        spent: dict[int, float] = {}
        for i, chunk in enumerate(chunks):
            if not isinstance(chunk.get("text"), str):
                kept.append(chunk)
                continue
            slot = Slot(f"context[{chunk.get('id', i)}]", "context", chunk, "text")
            drop = False
            for check in checks:
                started = time.perf_counter()
                finding = check.check_context(subject, slot)
                us = (time.perf_counter() - started) * 1e6
                spent[id(check)] = spent.get(id(check), 0.0) + us
                tracing.check(check, us, finding)
                if finding is not None:
                    findings.setdefault(id(check), []).append(finding)
                    drop = drop or finding.verdict == "blocked"
            if not drop:
                kept.append(chunk)
        for check in checks:
            if id(check) in findings:
                merged = _merge(findings[id(check)])
                call.decisions.append(decision(policy, check, "context", merged, spent[id(check)]))
        return kept

    # -- after the call ---------------------------------------------------------------------------------

    def check_chat_output(self, call: PolicyCall, data: Json) -> None:
        payload = chat_output(data)
        blocked = self.post_call(call, payload)
        if blocked:
            for choice in data.get("choices") or ():
                if isinstance(choice, dict):
                    message = choice.get("message")
                    if isinstance(message, dict):
                        message["content"] = None
                    choice["finish_reason"] = "content_filter"

    def post_call(self, call: PolicyCall, payload: Payload) -> bool:
        """Run the output checks on an answer. True when a check blocks it (the caller withholds it);
        raises when the answer is the upstream's fault (e.g. invalid JSON under response_format)."""
        state = call.policy
        if not isinstance(state, CallState) or state.subject is None:
            return False
        blocked = False
        for check in state.policy.checks_for(state.subject):
            started = time.perf_counter()
            finding = check.check_output(state.subject, payload, state.request)
            us = (time.perf_counter() - started) * 1e6
            tracing.check(check, us, finding)
            if finding is None:
                continue
            call.decisions.append(decision(state.policy, check, "output", finding, us))
            if finding.verdict == "blocked":
                if finding.error is not None:
                    raise finding.error
                blocked = True
        return blocked

    async def wrap_stream(self, call: PolicyCall, first: Json, rest: ChunkStream) -> tuple[Json, ChunkStream]:
        state = call.policy
        if not isinstance(state, CallState) or state.subject is None:
            return first, rest
        subject = state.subject
        checks = state.policy.checks_for(subject)
        bound = [(c, s) for c in checks if (s := c.scanner(subject)) is not None]
        needs_text = [c for c in checks if c.needs_full_answer]
        if not bound and not needs_text:
            return first, rest
        guard = StreamGuard(bound, lambda g: self._stream_done(call, state, g, needs_text))
        state.guard = guard
        stream = guard.wrap(first, rest)
        return await anext(stream), stream

    def _stream_done(
        self, call: PolicyCall, state: CallState, guard: StreamGuard, needs_text: list[PolicyCheck[Any]]
    ) -> None:
        for check, finding in guard.findings():
            call.decisions.append(decision(state.policy, check, "output", finding, 0.0))
        assert state.subject is not None
        text = Payload("output", [Slot("choices[0]", "output", [guard.text(0)], 0)])
        for check in needs_text:
            found = check.check_output(state.subject, text, state.request)
            if found is not None:
                if found.verdict == "blocked":  # already sent: it can only be recorded
                    found = Finding("flagged", f"{found.matched} (stream, already sent)", count=1)
                call.decisions.append(decision(state.policy, check, "output", found, 0.0))

    # -- at finish ----------------------------------------------------------------------------------------

    def settle(self, call: PolicyCall) -> None:
        """Replace estimates with what the call used; count its spend. Runs once, from Gateway.finish."""
        state = call.policy
        if not isinstance(state, CallState):
            call.extra.setdefault("policy", self.compiled.hash12)  # refused before the policies ran
            return
        if state.settled:
            return
        state.settled = True
        call.extra["policy"] = state.policy.hash12
        if state.guard is not None:
            state.guard.done()
        if state.uncounted:
            return
        usage = Usage(call.tokens_in or 0, call.tokens_out or 0, call.cost or 0.0)
        settlements: list[Settlement] = []
        for charge, check in state.charges:
            actual = check.actual(charge, usage)
            if actual is not None:
                settlements.append(Settlement(charge, actual))
        if state.policy.tracks_spend and state.subject is not None and usage.cost_usd > 0:
            settlements.extend(
                _spend_settlements(state.subject, usage, {c.counter for c, _ in state.charges})
            )
        if settlements:
            self.store.settle(settlements)


def _warm_up() -> None:
    """Load the tokenizers and the cost map now: lazily, the first request would wait ~2 s for them."""
    for model in ("gpt-4", "gpt-4o"):
        encoding_for(model).encode("warm up")
    prices_for("gpt-4o-mini")


def _query_slots(messages: list[Any], variables: dict[str, Any]) -> list[Slot]:
    slots = [
        Slot(f"messages[{i}]", str(m.get("role")), m, "content")
        for i, m in enumerate(messages)
        if isinstance(m, dict) and isinstance(m.get("content"), str)
    ]
    slots += [
        Slot(f"prompt_variables.{k}", "variable", variables, k)
        for k, v in variables.items()
        if isinstance(v, str)
    ]
    return slots


def _spend_settlements(subject: Subject, usage: Usage, charged: set[str]) -> list[Settlement]:
    """The ledgers a request's cost is counted in though no budget check reserved on them: spend is a
    fact of the key and principal, so a budget added later (or another rule's) sees all of it."""
    now = time.time()
    out = []
    for period_id, end in (day_period(now), month_period(now)):
        for scope, ident in (("key", subject.key_id), ("principal", subject.principal)):
            counter = ledger(scope, ident, period_id)
            if counter not in charged:
                charge = Charge(counter, "budget", 0, 0, period_end=end)
                out.append(Settlement(charge, nano_usd(usage.cost_usd)))
    return out


def _dedupe(charges: list[tuple[Charge, PolicyCheck[Any]]]) -> list[tuple[Charge, PolicyCheck[Any]]]:
    """Two budget checks on one ledger reserve once, against the lower limit."""
    seen: dict[str, int] = {}
    out: list[tuple[Charge, PolicyCheck[Any]]] = []
    for charge, check in charges:
        if charge.kind == "budget" and charge.counter in seen:
            i = seen[charge.counter]
            if charge.limit < out[i][0].limit and not charge.soft:
                out[i] = (charge, check)
            continue
        seen[charge.counter] = len(out)
        out.append((charge, check))
    return out


def _merge(findings: list[Finding]) -> Finding:
    order = {"blocked": 3, "redacted": 2, "flagged": 1, "allowed": 0, "error": 4}
    worst = max(findings, key=lambda f: order[f.verdict])
    matched = "; ".join(f.matched for f in findings if f.matched)
    return Finding(worst.verdict, matched[:500], count=sum(f.count for f in findings))


def _store_unavailable(backend: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the {backend} store that holds rate limits and budgets is unreachable and the policy says"
        " on_store_error: block; retry shortly",
        retry_after_s=1,
        code="limit_store_unavailable",
    )
