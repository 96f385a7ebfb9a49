"""Payloads as the store keeps them: every string in them with personal data replaced by placeholders.

The store redacts every kind the PII policy knows (gateway/policy/pii.py), whatever the policy in force
does with them, so stored text never holds what any PII rule would redact.
"""

from __future__ import annotations

from typing import Any

from gateway.policy.pii import find_pii, placeholder, redact


def redact_text(text: str) -> str:
    hits = find_pii(text)
    return redact(text, hits, placeholder) if hits else text


def redact_payload(value: Any) -> Any:
    """A copy of a JSON value with personal data in every string (keys too) redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {redact_text(k) if isinstance(k, str) else k: redact_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_payload(v) for v in value]
    return value
