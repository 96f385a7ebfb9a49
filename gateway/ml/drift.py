"""Input and prediction drift against the reference dataset, with Evidently's default tests (scipy).

Per column, by the column's type and the reference size (Evidently's "auto" choice):
    reference <= 1,000 rows
        numeric with > 5 distinct values   two-sample Kolmogorov-Smirnov     drift if p < 0.05
        binary (<= 2 distinct values)      Z-test for two proportions        drift if p < 0.05
        other categorical / numeric <= 5   chi-squared goodness of fit       drift if p < 0.05
    reference > 1,000 rows
        numeric with > 5 distinct values   Wasserstein distance / std(ref)   drift if >= 0.1
        categorical / numeric <= 5         Jensen-Shannon distance           drift if >= 0.1
PSI (10 bins, drift if >= 0.1) is available for every column with `drift.method: psi`.
Dataset drift: the share of drifted columns >= `dataset_share` (0.5). Missing values are left out.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

P_VALUE = 0.05
DISTANCE = 0.1
SMALL_REFERENCE = 1000
NUMERIC_MIN_UNIQUE = 5


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    kind: str  # num | cat
    test: str  # ks | z | chisquare | wasserstein | jensenshannon | psi
    score: float  # the p-value for tests, the distance for distances
    threshold: float
    drifted: bool
    reference_rows: int
    current_rows: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _clean(values: list[Any]) -> list[Any]:
    return [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def column_kind(reference: list[Any], numeric_type: bool) -> str:
    return "num" if numeric_type and len(set(reference)) > NUMERIC_MIN_UNIQUE else "cat"


def _shares(values: list[Any], keys: list[Any]) -> np.ndarray:
    counts = Counter(values)
    return np.array([counts.get(k, 0) for k in keys], dtype=np.float64) / max(len(values), 1)


def ks(ref: list[Any], cur: list[Any]) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(ref, dtype=float), np.asarray(cur, dtype=float)).pvalue)


def z_test(ref: list[Any], cur: list[Any]) -> float:
    """Two-proportion Z-test on the share of one of the (at most two) values."""
    from scipy.stats import norm

    keys = sorted(set(ref) | set(cur), key=str)
    if len(keys) < 2:
        return 1.0
    target = keys[0]
    n1, n2 = len(ref), len(cur)
    p1, p2 = ref.count(target) / n1, cur.count(target) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    denom = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if denom == 0:
        return 1.0 if p1 == p2 else 0.0
    return float(2 * (1 - norm.cdf(abs((p1 - p2) / denom))))


def chi_squared(ref: list[Any], cur: list[Any]) -> float:
    from scipy.stats import chisquare

    keys = sorted(set(ref) | set(cur), key=str)
    observed = np.array([Counter(cur).get(k, 0) for k in keys], dtype=np.float64)
    expected = _shares(ref, keys) * len(cur)
    if np.any((expected == 0) & (observed > 0)):
        return 0.0  # a value never seen in the reference
    keep = expected > 0
    if keep.sum() < 2:
        return 1.0
    return float(chisquare(observed[keep], expected[keep]).pvalue)


def wasserstein_normed(ref: list[Any], cur: list[Any]) -> float:
    from scipy.stats import wasserstein_distance

    r = np.asarray(ref, dtype=float)
    return float(wasserstein_distance(r, np.asarray(cur, dtype=float)) / max(float(np.std(r)), 0.001))


def jensen_shannon(ref: list[Any], cur: list[Any]) -> float:
    from scipy.spatial.distance import jensenshannon

    keys = sorted(set(ref) | set(cur), key=str)
    return float(jensenshannon(_shares(ref, keys), _shares(cur, keys)))


def psi(ref: list[Any], cur: list[Any], kind: str, bins: int = 10) -> float:
    if kind == "num":
        r, c = np.asarray(ref, dtype=float), np.asarray(cur, dtype=float)
        edges = np.histogram_bin_edges(np.concatenate([r, c]), bins=bins)
        rp = np.histogram(r, edges)[0] / len(r)
        cp = np.histogram(c, edges)[0] / len(c)
    else:
        keys = sorted(set(ref) | set(cur), key=str)
        rp, cp = _shares(ref, keys), _shares(cur, keys)
    rp = np.where(rp == 0, 0.0001, rp)
    cp = np.where(cp == 0, 0.0001, cp)
    return float(np.sum((cp - rp) * np.log(cp / rp)))


def column_drift(
    column: str,
    reference: list[Any],
    current: list[Any],
    *,
    numeric_type: bool,
    method: str = "auto",
    threshold: float | None = None,
) -> ColumnDrift | None:
    ref, cur = _clean(reference), _clean(current)
    if not ref or not cur:
        return None
    kind = column_kind(ref, numeric_type)
    if method == "psi":
        score, limit = psi(ref, cur, kind), threshold or DISTANCE
        return ColumnDrift(column, kind, "psi", score, limit, score >= limit, len(ref), len(cur))
    if len(ref) <= SMALL_REFERENCE:
        if kind == "num":
            test, score = "ks", ks(ref, cur)
        elif len(set(ref) | set(cur)) <= 2:
            test, score = "z", z_test(ref, cur)
        else:
            test, score = "chisquare", chi_squared(ref, cur)
        limit = threshold or P_VALUE
        return ColumnDrift(column, kind, test, score, limit, score < limit, len(ref), len(cur))
    if kind == "num":
        test, score = "wasserstein", wasserstein_normed(ref, cur)
    else:
        test, score = "jensenshannon", jensen_shannon(ref, cur)
    limit = threshold or DISTANCE
    return ColumnDrift(column, kind, test, score, limit, score >= limit, len(ref), len(cur))


def dataset_drift(columns: list[ColumnDrift], share: float) -> dict[str, Any]:
    drifted = [c.column for c in columns if c.drifted]
    ratio = len(drifted) / len(columns) if columns else 0.0
    return {
        "columns": len(columns),
        "drifted_columns": drifted,
        "share": ratio,
        "threshold": share,
        "dataset_drift": bool(columns) and ratio >= share,
    }
