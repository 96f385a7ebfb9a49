"""Deny list: terms (whole words, any case) and regexes that must not appear in input or output.

    - {type: deny_list, terms: ["project falcon"], patterns: ["(?i)internal use only"], mode: block}

Input: 400 `denied_content` naming the term (block), or the term replaced (redact), or flagged.
Output: the answer ends with finish_reason `content_filter` where the term starts (block, streams too),
or the term is replaced with `[REDACTED:DENIED]` (redact).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from gateway.errors import InvalidRequest
from gateway.policy.base import CheckConfig, Finding, Hit, Payload, PolicyCheck, Scanner, Slot, Subject
from gateway.policy.checks.text_modes import screen_slots
from gateway.policy.pii import resolve_overlaps

REPLACEMENT = "[REDACTED:DENIED]"


class DenyListConfig(CheckConfig):
    type: Literal["deny_list"]
    terms: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    mode: Literal["block", "redact", "flag"] = "block"
    apply_to: list[Literal["input", "output"]] = Field(default=["input", "output"])

    @model_validator(mode="after")
    def _compiles(self) -> DenyListConfig:
        if not self.terms and not self.patterns:
            raise ValueError("a deny_list needs terms, patterns or both")
        for regex in self.patterns:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"pattern {regex!r} is not a valid regex: {exc}") from exc
        return self


class DenyScanner(Scanner):
    def __init__(self, check: DenyList) -> None:
        self.check = check
        self.action = check.config.mode
        longest = max((len(t) for t in check.config.terms), default=0)
        self.holdback = max(64, longest + 1)

    def find(self, text: str) -> list[Hit]:
        return self.check.find(text)

    def replacement(self, hit: Hit) -> str:
        return REPLACEMENT


class DenyList(PolicyCheck[DenyListConfig]):
    type = "deny_list"
    config_model = DenyListConfig
    phase = 15

    def __init__(self, config: DenyListConfig, rule: str) -> None:
        super().__init__(config, rule)
        self.patterns: list[re.Pattern[str]] = []
        if config.terms:
            words = "|".join(re.escape(t) for t in sorted(config.terms, key=len, reverse=True))
            self.patterns.append(re.compile(f"\\b(?:{words})\\b", re.IGNORECASE))
        # compiled one by one: a pattern may carry its own global flags, e.g. (?i)
        self.patterns.extend(re.compile(p) for p in config.patterns)

    def find(self, text: str) -> list[Hit]:
        hits = [
            Hit(m.start(), m.end(), m.group()[:60])
            for pattern in self.patterns
            for m in pattern.finditer(text)
            if m.end() > m.start()
        ]
        if len(self.patterns) > 1:
            hits = resolve_overlaps(sorted(hits, key=lambda h: h.start))
        return hits

    def check_input(self, subject: Subject, payload: Payload) -> Finding | None:
        if "input" not in self.config.apply_to:
            return None

        def blocked(hits: list[Hit], slot: Slot) -> Finding:
            error = InvalidRequest(
                f"the request contains denied content ({hits[0].kind!r} in {slot.where}); policy rule"
                f" {self.rule!r} (deny_list) blocks it",
                param=slot.where.split("[", 1)[0],
                code="denied_content",
            )
            return Finding("blocked", f"{hits[0].kind!r} in {slot.where}", error, count=len(hits))

        slots = [s for s in payload.slots if s.upstream]
        return screen_slots(slots, self.find, self.config.mode, lambda h: REPLACEMENT, blocked, payload)

    def check_output(self, subject: Subject, payload: Payload, request: Payload | None) -> Finding | None:
        if "output" not in self.config.apply_to:
            return None

        def blocked(hits: list[Hit], slot: Slot) -> Finding:
            return Finding("blocked", f"{hits[0].kind!r} in {slot.where}", count=len(hits))

        return screen_slots(payload.slots, self.find, self.config.mode, lambda h: REPLACEMENT, blocked)

    def scanner(self, subject: Subject) -> Scanner | None:
        return DenyScanner(self) if "output" in self.config.apply_to else None
