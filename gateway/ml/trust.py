"""Whether a model file may load in the gateway: the operator decides, the spec cannot vouch for itself.

Two kinds of model file:
- safe: a skops file whose types are all in skops' safe set or in the operator's `ml.trusted_types`.
  Loading it runs no code of the file's choosing, so it loads for whoever the access rules let reach
  the version (a prompt engineer evaluating a candidate by number, too).
- unsafe: pickle or joblib, or a skops file with other types: loading it can run arbitrary code. It loads
  only when both hold:
    1. the operator lists the model in `ml.trusted_models` of config/gateway.yaml, by name or by the
       sha256 of the model file's bytes, and
    2. a protected alias (`governance.protected_aliases`: staging and production by default) points at
       the version now, i.e. people other than its author approved it.
  A spec's `trusted: true` or `trusted_types` count for nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.ml.config import MLConfig


@dataclass(frozen=True, slots=True)
class TrustList:
    """The operator's `ml.trusted_models` and `ml.trusted_types`."""

    names: frozenset[str] = frozenset()
    hashes: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: MLConfig) -> TrustList:
        names = {e for e in config.trusted_models if not e.startswith("sha256:")}
        hashes = {e.removeprefix("sha256:") for e in config.trusted_models if e.startswith("sha256:")}
        return cls(frozenset(names), frozenset(hashes), frozenset(config.trusted_types))

    def trusts(self, name: str, data: bytes) -> bool:
        if name in self.names:
            return True
        return bool(self.hashes) and hashlib.sha256(data).hexdigest() in self.hashes


@dataclass(frozen=True, slots=True)
class LoadGrant:
    """What loading one version may do, from the operator's trust list and the aliases as they are now."""

    trust: TrustList
    approved: bool  # a protected alias points at the version
    protected: tuple[str, ...] = ("staging", "production")

    @classmethod
    def safe_only(cls) -> LoadGrant:
        return cls(TrustList(), approved=False)


def approved(aliases: dict[str, int], version: int, protected: tuple[str, ...]) -> bool:
    """Whether a protected alias of the artifact (`{alias: version}`) points at this version."""
    return any(aliases.get(alias) == version for alias in protected)
