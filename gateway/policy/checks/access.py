"""Access: which routers, prompts, indexes and models the keys a rule matches may call (403 otherwise).

Key allow lists (`opsgate keys create --allow`) still apply first; this check adds rules by role,
principal or key in the policy file, e.g. `{type: access, prompts: ["support_*"], routers: [default]}`.
A kind left out is not restricted.
"""

from __future__ import annotations

from typing import Literal

from gateway.errors import PermissionDenied
from gateway.policy.base import CheckConfig, Finding, Payload, PolicyCheck, Subject
from gateway.policy.spec import Globs, compile_globs

PLURAL = {"router": "routers", "prompt": "prompts", "index": "indexes", "model": "models"}


class AccessConfig(CheckConfig):
    type: Literal["access"]
    mode: Literal["block", "flag"] = "block"
    routers: Globs | None = None
    prompts: Globs | None = None
    indexes: Globs | None = None
    models: Globs | None = None


class Access(PolicyCheck[AccessConfig]):
    type = "access"
    config_model = AccessConfig
    phase = 0
    stage = "authorise"

    def __init__(self, config: AccessConfig, rule: str) -> None:
        super().__init__(config, rule)
        self.mode = config.mode
        self.allowed = {
            kind: (patterns, compile_globs(patterns))
            for kind, patterns in (
                ("router", config.routers),
                ("prompt", config.prompts),
                ("index", config.indexes),
                ("model", config.models),
            )
            if patterns is not None
        }

    def check_input(self, subject: Subject, payload: Payload) -> Finding | None:
        for kind, name in subject.targets:
            entry = self.allowed.get(kind)
            if entry is None:
                continue
            patterns, compiled = entry
            if compiled is not None and compiled.match(name):
                continue
            allowed = ", ".join(patterns) if patterns else "none"
            error = PermissionDenied(
                f"policy rule {self.rule!r} (access) does not let this key call {kind}:{name}"
                f" (roles: {', '.join(sorted(subject.roles)) or 'none'}); allowed {PLURAL[kind]}: {allowed}."
                " Ask an admin to extend the rule in config/policies.yaml, or call an allowed one.",
                param="model",
                code="policy_access_denied",
            )
            return Finding("blocked" if self.mode == "block" else "flagged", f"{kind}:{name}", error)
        return Finding("allowed")
