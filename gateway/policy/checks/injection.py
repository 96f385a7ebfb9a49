"""Prompt injection: heuristics (gateway/policy/injection.py) on user input and retrieved chunks.

    - {type: injection, mode: block}   # or flag; rules: [...] to choose; patterns: {name: regex} to add

Input: the caller's user and tool messages and prompt variables (`roles`); a hit blocks the request
(400 `prompt_injection` naming the rule and where) or is flagged. Retrieved context: a chunk that hits
is dropped from the prompt (block) or kept and flagged; the request goes on either way, so a poisoned
document cannot take a prompt down for everyone.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from gateway.errors import InvalidRequest
from gateway.policy.base import CheckConfig, Finding, Payload, PolicyCheck, Slot, Subject, Verdict
from gateway.policy.injection import RULE_NAMES, InjectionRules

RuleName = Literal[
    "ignore_instructions",
    "role_play_escape",
    "prompt_leak",
    "fake_turn_markers",
    "new_instructions",
    "hidden_instructions",
    "hidden_text",
]
assert set(RuleName.__args__) == set(RULE_NAMES)  # type: ignore[attr-defined]


class InjectionConfig(CheckConfig):
    type: Literal["injection"]
    mode: Literal["block", "flag"] = "block"
    rules: list[RuleName] | None = Field(None, description="Built-in rules to use (default: all).")
    patterns: dict[str, str] = Field(default_factory=dict, description="Extra rules: name -> regex.")
    apply_to: list[Literal["input", "context"]] = Field(default=["input", "context"])
    roles: list[str] = Field(
        default_factory=lambda: ["user", "tool", "function", "variable"],
        description="Which input texts are screened: message roles, and 'variable' for prompt variables.",
    )

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for name, regex in value.items():
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regex: {exc}") from exc
        return value


class Injection(PolicyCheck[InjectionConfig]):
    type = "injection"
    config_model = InjectionConfig
    phase = 20

    def __init__(self, config: InjectionConfig, rule: str) -> None:
        super().__init__(config, rule)
        self.rules = InjectionRules.build(
            list(config.rules) if config.rules is not None else None, config.patterns
        )
        self.roles = frozenset(config.roles)

    def check_input(self, subject: Subject, payload: Payload) -> Finding | None:
        if "input" not in self.config.apply_to:
            return None
        for slot in payload.slots:
            if slot.role not in self.roles:
                continue
            name = self.rules.first_match(slot.text)
            if name is None:
                continue
            if self.config.mode == "flag":
                return Finding("flagged", f"{name} in {slot.where}", count=1)
            error = InvalidRequest(
                f"the request looks like a prompt injection (rule {name} in {slot.where}); policy rule"
                f" {self.rule!r} (injection) blocks it. If this is a false positive, rephrase, or ask an"
                " admin to set the check to flag",
                param=slot.where.split("[", 1)[0],
                code="prompt_injection",
            )
            return Finding("blocked", f"{name} in {slot.where}", error, count=1)
        return Finding("allowed")

    def check_context(self, subject: Subject, slot: Slot) -> Finding | None:
        if "context" not in self.config.apply_to:
            return None
        name = self.rules.first_match(slot.text)
        if name is None:
            return Finding("allowed")
        verdict: Verdict = "blocked" if self.config.mode == "block" else "flagged"
        return Finding(verdict, f"{name} in {slot.where}", count=1)
