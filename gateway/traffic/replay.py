"""Replay and datasets from stored traffic: what a stored call sent, which versions served it, what has
moved on since, and eval datasets (JSONL) built from stored calls of a prompt.

Blocking (SQLAlchemy); used by the CLI.
"""

from __future__ import annotations

import difflib
import hashlib
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, select

from gateway.db.generation import as_utc
from gateway.db.models import Alias, ArtifactVersion, RequestLog
from gateway.errors import NotFound, OpsgateError
from gateway.prompts.render import render_messages
from gateway.prompts.spec import PromptSpec
from gateway.shapes import ArtifactRef
from gateway.traffic.config import TrafficConfig
from gateway.traffic.redact import redact_payload
from gateway.traffic.store import StoredCall, TrafficStore

ROUTES = {"chat.completion": "/v1/chat/completions", "text_completion": "/v1/completions",
          "response": "/v1/responses", "message": "/v1/messages"}  # fmt: skip


@dataclass(slots=True)
class ReplayCase:
    row: dict[str, Any]  # the request-log row
    stored: StoredCall

    @property
    def versions(self) -> list[ArtifactRef]:
        return [ref for text in self.row.get("artifacts") or () if (ref := ArtifactRef.parse(text))]

    @property
    def target(self) -> str:
        """The model the call named, pinned to the versions that served it (prompt first, else router)."""
        refs = self.versions
        prompts = [r for r in refs if r.kind == "prompt"]
        chosen = prompts[0] if prompts else next((r for r in refs if r.kind == "router"), None)
        return chosen.pinned if chosen is not None else str(self.row.get("model") or "")

    def request_body(self, to: str | None = None) -> dict[str, Any]:
        """The caller's body as stored (redacted), aimed at the pinned versions or at `to`."""
        body = dict(self.stored.payload.get("request") or {})
        body["model"] = to or self.target
        for key in ("prompt_id", "prompt_version", "store", "stream", "stream_options"):
            body.pop(key, None)
        return body

    @property
    def route(self) -> str:
        return ROUTES.get(self.stored.kind, "/v1/chat/completions")

    @property
    def answer(self) -> str:
        return answer_text(self.stored.payload.get("chat") or self.stored.payload.get("response") or {})


def rerender(engine: Engine, case: ReplayCase, to: str | None = None) -> dict[str, Any] | None:
    """The upstream messages rebuilt from the stored call and its lineage: the prompt version that served
    it, rendered with the stored variables and the retrieved chunks as its template saw them, then the
    caller's messages. `byte_equal` compares the rebuild with the sha256 of the messages as sent (recorded
    before redaction); `diff` shows how they differ if not. `moved` renders the same call with another
    version of the prompt (`to`, e.g. `prompt:docs_qa@7`, else the newest version when there is a newer
    one) and diffs it against the rebuild. None when no prompt served the call (its messages were the
    caller's, as stored)."""
    prompt = next((ref for ref in case.versions if ref.kind == "prompt"), None)
    if prompt is None:
        return None
    payload = case.stored.payload
    request = payload.get("request") or {}
    sent = (payload.get("upstream") or {}).get("messages") or []
    rebuilt = _render(engine, prompt.name, prompt.version, case)
    digest = hashlib.sha256(orjson.dumps(rebuilt)).hexdigest()
    recorded = payload.get("rendered_sha256")
    redacted = redact_payload(rebuilt)
    report: dict[str, Any] = {
        "prompt": prompt.pinned,
        "variables": request.get("prompt_variables") or {},
        "chunk_ids": [c.get("id") for c in payload.get("contexts") or ()],
        "sha256": digest,
        "recorded_sha256": recorded,
        "byte_equal": digest == recorded,
        "equal_after_redaction": redacted == sent,
        "messages": redacted,
        "diff": [] if redacted == sent else _diff(sent, redacted, "sent", "rebuilt"),
        "moved": None,
    }
    other = _other_version(engine, prompt, to)
    if other is not None:
        try:
            moved = redact_payload(_render(engine, prompt.name, other, case))
            report["moved"] = {"prompt": f"prompt:{prompt.name}@{other}", "diff": _diff(redacted, moved,
                               prompt.pinned, f"prompt:{prompt.name}@{other}")}  # fmt: skip
        except OpsgateError as exc:
            report["moved"] = {"prompt": f"prompt:{prompt.name}@{other}", "error": exc.message}
    return report


def _render(engine: Engine, name: str, version: int, case: ReplayCase) -> list[Any]:
    with engine.connect() as conn:
        row = conn.execute(
            select(ArtifactVersion.spec, ArtifactVersion.files).where(
                ArtifactVersion.kind == "prompt",
                ArtifactVersion.name == name,
                ArtifactVersion.version == version,
            )
        ).first()
    if row is None:
        raise NotFound(f"prompt:{name}@{version} is not in the registry")
    payload = case.stored.payload
    request = payload.get("request") or {}
    rendered = render_messages(
        PromptSpec.model_validate(row.spec),
        dict(request.get("prompt_variables") or {}),
        templates={str(k): str(v) for k, v in (row.files or {}).items()},
        context=list(payload.get("contexts") or []),
    )
    caller = request.get("messages")
    return rendered + (list(caller) if isinstance(caller, list) else [])


def _other_version(engine: Engine, prompt: ArtifactRef, to: str | None) -> int | None:
    if to is not None:
        target = to.removeprefix("prompt:")
        name, _, selector = target.partition("@")
        if name != prompt.name or not selector.isdigit():
            return None  # another artifact, or an alias: the replay names what it resolves to
        return int(selector) if int(selector) != prompt.version else None
    with engine.connect() as conn:
        latest = conn.execute(
            select(ArtifactVersion.version)
            .where(ArtifactVersion.kind == "prompt", ArtifactVersion.name == prompt.name)
            .order_by(ArtifactVersion.version.desc())
            .limit(1)
        ).scalar()
    return latest if latest is not None and latest != prompt.version else None


def _diff(a: Any, b: Any, a_name: str, b_name: str) -> list[str]:
    """A unified diff of two message lists, line by line of their text (other content as JSON)."""

    def lines(messages: Any) -> list[str]:
        out: list[str] = []
        for i, message in enumerate(messages if isinstance(messages, list) else [messages]):
            role = message.get("role") if isinstance(message, dict) else None
            content = message.get("content") if isinstance(message, dict) else message
            out.append(f"[{i}] {role}:")
            text = content if isinstance(content, str) else orjson.dumps(content).decode()
            out += ["    " + line for line in text.split("\n")]
        return out

    return list(difflib.unified_diff(lines(a), lines(b), a_name, b_name, lineterm=""))


def answer_text(data: dict[str, Any]) -> str:
    choices = data.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else ""


def load_case(engine: Engine, request_id: str) -> ReplayCase:
    with engine.connect() as conn:
        found = (
            conn.execute(select(RequestLog.__table__).where(RequestLog.id == request_id)).mappings().first()
        )
    if found is None:
        raise NotFound(f"no request {request_id!r} in the request log")
    stored = TrafficStore(engine, TrafficConfig()).by_request(request_id)
    if stored is None:
        raise NotFound(
            f"request {request_id!r} was not stored: replay needs its payload (send `store: true`, or name its"
            " router or prompt under traffic: in config/gateway.yaml)"
        )
    return ReplayCase(dict(found), stored)


def moved_on(engine: Engine, refs: list[ArtifactRef]) -> list[str]:
    """For each version, the aliases of its artifact that now point elsewhere, and its newest version."""
    notes: list[str] = []
    with engine.connect() as conn:
        for ref in refs:
            latest = conn.execute(
                select(ArtifactVersion.version)
                .where(ArtifactVersion.kind == ref.kind, ArtifactVersion.name == ref.name)
                .order_by(ArtifactVersion.version.desc())
                .limit(1)
            ).scalar()
            if latest is not None and latest != ref.version:
                notes.append(f"{ref.pinned}: newest version is now @{latest}")
            aliases = conn.execute(
                select(Alias.alias, Alias.version).where(Alias.kind == ref.kind, Alias.name == ref.name)
            ).all()
            for alias, version in aliases:
                if version != ref.version:
                    notes.append(f"{ref.pinned}: {alias} now points at @{version}")
    return notes


def dataset_lines(
    engine: Engine, prompt: str, since: datetime, sample: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Eval cases from the stored calls of `prompt` since `since` (answered, 2xx): a seeded sample of `sample`."""
    query = (
        select(RequestLog.id, RequestLog.ts, RequestLog.artifacts)
        .where(RequestLog.ts >= since, RequestLog.status < 300)
        .order_by(RequestLog.ts)
    )
    store = TrafficStore(engine, TrafficConfig())
    lines: list[dict[str, Any]] = []
    with engine.connect() as conn:
        rows = [
            r
            for r in conn.execute(query)
            if any(str(a).startswith(f"prompt:{prompt}@") for a in r.artifacts or ())
        ]
    for request_id, ts, artifacts in rows:
        stored = store.by_request(request_id)
        if stored is None:
            continue
        lines.append(case_line(request_id, as_utc(ts), list(artifacts or ()), stored))
    if len(lines) > sample:
        lines = sorted(random.Random(seed).sample(lines, sample), key=lambda line: line["metadata"]["ts"])
    return lines


def case_line(request_id: str, ts: datetime, artifacts: list[str], stored: StoredCall) -> dict[str, Any]:
    payload = stored.payload
    request = payload.get("request") or {}
    contexts = payload.get("contexts") or []
    return {
        "id": request_id,
        "question": payload.get("question") or _last_user(request.get("messages") or []),
        "answer": answer_text(payload.get("chat") or payload.get("response") or {}),
        "contexts": [c.get("text", "") for c in contexts],
        "reference_context_ids": [c.get("id") for c in contexts],
        "variables": request.get("prompt_variables") or {},
        "metadata": {
            "request_id": request_id,
            "ts": ts.isoformat(),
            "versions": artifacts,
            "stored_id": stored.id,
        },
    }


def _last_user(messages: list[Any]) -> str:
    for message in reversed(messages):
        if (
            isinstance(message, dict)
            and message.get("role") == "user"
            and isinstance(message.get("content"), str)
        ):
            return str(message["content"])
    return ""
