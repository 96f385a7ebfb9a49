"""PII: emails, phone numbers, payment cards, IBANs, national ids and IP addresses (gateway/policy/pii.py).

    - {type: pii, mode: redact}        # block | redact | flag; apply_to: [input, context, output]

`redact` replaces each hit with `[REDACTED:KIND]` before the upstream sees the text (input and
retrieved context) and before the caller does (output, streamed output too, across chunk boundaries).
`block` refuses the request (400 `pii_detected`, naming the kind and where, never the value), drops a
retrieved chunk, or ends an answer with finish_reason `content_filter`. `allow` lists values that are
never treated as personal data (e.g. your support address in a prompt template).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.errors import InvalidRequest
from gateway.policy.base import (
    STAGES,
    CheckConfig,
    Finding,
    Hit,
    Payload,
    PolicyCheck,
    Scanner,
    Slot,
    Stage,
    Subject,
)
from gateway.policy.checks.text_modes import kinds_in, screen_slots
from gateway.policy.pii import KINDS, find_pii, placeholder

Kind = Literal["email", "phone", "card", "iban", "national_id", "ip"]


class PiiConfig(CheckConfig):
    type: Literal["pii"]
    mode: Literal["block", "redact", "flag"] = "redact"
    kinds: list[Kind] = Field(default_factory=lambda: list(KINDS))  # type: ignore[arg-type]
    apply_to: list[Stage] = Field(default_factory=lambda: list(STAGES))
    allow: list[str] = Field(default_factory=list, description="Values never treated as personal data.")


class PiiScanner(Scanner):
    def __init__(self, check: Pii) -> None:
        self.check = check
        self.action = check.config.mode

    def find(self, text: str) -> list[Hit]:
        return self.check.find(text)

    def replacement(self, hit: Hit) -> str:
        return placeholder(hit)


class Pii(PolicyCheck[PiiConfig]):
    type = "pii"
    config_model = PiiConfig
    phase = 10
    screens_query = True

    def __init__(self, config: PiiConfig, rule: str) -> None:
        super().__init__(config, rule)
        self.kinds = frozenset(config.kinds)
        self.allow = frozenset(v.lower() for v in config.allow)

    def find(self, text: str) -> list[Hit]:
        hits = find_pii(text, self.kinds)
        if self.allow and hits:
            hits = [h for h in hits if text[h.start : h.end].lower() not in self.allow]
        return hits

    def check_input(self, subject: Subject, payload: Payload) -> Finding | None:
        if "input" not in self.config.apply_to:
            return None
        slots = [s for s in payload.slots if s.upstream]

        def blocked(hits: list[Hit], slot: Slot) -> Finding:
            kinds = kinds_in(hits)
            error = InvalidRequest(
                f"the request contains personal data ({kinds} in {slot.where}); policy rule {self.rule!r}"
                " (pii) blocks it: remove it and send the request again",
                param=slot.where.split("[", 1)[0],
                code="pii_detected",
            )
            return Finding("blocked", f"{kinds} in {slot.where}", error, count=len(hits))

        return screen_slots(slots, self.find, self.config.mode, placeholder, blocked, payload)

    def check_context(self, subject: Subject, slot: Slot) -> Finding | None:
        if "context" not in self.config.apply_to:
            return None
        return screen_slots([slot], self.find, self.config.mode, placeholder, self._dropped)

    def check_output(self, subject: Subject, payload: Payload, request: Payload | None) -> Finding | None:
        if "output" not in self.config.apply_to:
            return None
        return screen_slots(payload.slots, self.find, self.config.mode, placeholder, self._dropped)

    def _dropped(self, hits: list[Hit], slot: Slot) -> Finding:
        kinds = kinds_in(hits)
        return Finding("blocked", f"{kinds} in {slot.where}", count=len(hits))

    def scanner(self, subject: Subject) -> Scanner | None:
        return PiiScanner(self) if "output" in self.config.apply_to else None
