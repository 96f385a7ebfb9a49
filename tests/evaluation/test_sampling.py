"""Online sampling is a pure function of the request id: same id, same decision, in every process."""

from __future__ import annotations

import secrets
import subprocess
import sys

from gateway.evaluation.online import sampled


def test_same_id_same_decision_and_nested_rates() -> None:
    ids = [f"req_{secrets.token_hex(12)}" for _ in range(4000)]
    at_10 = {i for i in ids if sampled(i, 0.1)}
    at_30 = {i for i in ids if sampled(i, 0.3)}
    assert at_10 == {i for i in ids if sampled(i, 0.1)}
    assert at_10 <= at_30  # a request sampled at 10% is sampled at 30% too
    assert 0.08 < len(at_10) / len(ids) < 0.12 and 0.27 < len(at_30) / len(ids) < 0.33
    assert not any(sampled(i, 0.0) for i in ids) and all(sampled(i, 1.0) for i in ids)


def test_decisions_do_not_depend_on_the_process() -> None:
    ids = [f"req_{n:024x}" for n in range(200)]
    here = [sampled(i, 0.5) for i in ids]
    code = f"from gateway.evaluation.online import sampled; print([sampled(i, 0.5) for i in {ids!r}])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other.strip() == str(here)
    # pinned: sha256 of the id against the rate, so a re-scoring job or another replica agrees
    assert [sampled(f"req_{n:024x}", 0.5) for n in range(8)] == here[:8]
    assert sampled("req_000000000000000000000000", 0.5) is sampled("req_000000000000000000000000", 0.5)
