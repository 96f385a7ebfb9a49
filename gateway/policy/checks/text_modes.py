"""What the text checks (pii, deny_list, injection) share: modes over slots, and verdict wording."""

from __future__ import annotations

from collections.abc import Callable

from gateway.policy.base import Finding, Hit, Payload, Slot, Verdict
from gateway.policy.pii import redact

Mode = str  # block | redact | flag


def screen_slots(
    slots: list[Slot],
    find: Callable[[str], list[Hit]],
    mode: Mode,
    replace: Callable[[Hit], str],
    blocked: Callable[[list[Hit], Slot], Finding],
    payload: Payload | None = None,
) -> Finding:
    """Apply `find` to each slot: block at the first hit, or redact / flag every hit."""
    kinds: set[str] = set()
    count = 0
    for slot in slots:
        text = slot.text
        hits = find(text)
        if not hits:
            continue
        if mode == "block":
            return blocked(hits, slot)
        count += len(hits)
        kinds.update(h.kind for h in hits)
        if mode == "redact":
            slot.replace(redact(text, hits, replace))
            if payload is not None:
                payload.changed()
    if not count:
        return Finding("allowed")
    verdict: Verdict = "redacted" if mode == "redact" else "flagged"
    return Finding(verdict, ",".join(sorted(kinds)), count=count)


def kinds_in(hits: list[Hit]) -> str:
    return ",".join(sorted({h.kind for h in hits}))
