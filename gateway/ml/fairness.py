"""Group fairness of a classifier's predictions, per protected attribute.

For each group g of an attribute: selection rate P(pred = favourable | g) over the window's predictions,
and true-positive rate P(pred = favourable | truth = favourable, g) over those with feedback.
    disparate impact               min rate / max rate            breach if < 0.8 (the four-fifths rule)
    demographic parity difference  max rate - min rate            breach if > 0.1
    equal opportunity difference   max TPR - min TPR              breach if > 0.1
Only groups with at least `min_group_size` rows (for TPR: rows whose truth is favourable) are judged;
smaller groups are listed with `judged: false`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gateway.ml.spec import FairnessSpec


def _same(a: Any, b: Any) -> bool:
    return a == b or str(a) == str(b)


def attribute_report(
    groups: list[Any], predictions: list[Any], truths: list[Any | None], spec: FairnessSpec
) -> dict[str, Any]:
    fav = spec.favourable
    stats: dict[str, dict[str, float]] = defaultdict(lambda: {"n": 0, "selected": 0, "positives": 0, "tp": 0})
    for group, pred, truth in zip(groups, predictions, truths, strict=True):
        s = stats[str(group)]
        s["n"] += 1
        selected = _same(pred, fav)
        s["selected"] += selected
        if truth is not None and _same(truth, fav):
            s["positives"] += 1
            s["tp"] += selected
    table: dict[str, Any] = {}
    for group, s in sorted(stats.items()):
        table[group] = {
            "n": int(s["n"]),
            "selection_rate": s["selected"] / s["n"],
            "labelled_favourable": int(s["positives"]),
            "true_positive_rate": s["tp"] / s["positives"] if s["positives"] else None,
            "judged": s["n"] >= spec.min_group_size,
        }
    rates = [g["selection_rate"] for g in table.values() if g["judged"]]
    tprs = [
        g["true_positive_rate"]
        for g in table.values()
        if g["judged"] and g["labelled_favourable"] >= spec.min_group_size
    ]
    out: dict[str, Any] = {"groups": table, "breaches": []}
    if len(rates) >= 2:
        high, low = max(rates), min(rates)
        out["disparate_impact"] = low / high if high > 0 else 1.0
        out["demographic_parity_difference"] = high - low
        if out["disparate_impact"] < spec.disparate_impact_min:
            out["breaches"].append("disparate_impact")
        if out["demographic_parity_difference"] > spec.parity_max_diff:
            out["breaches"].append("demographic_parity_difference")
    else:
        out["disparate_impact"] = out["demographic_parity_difference"] = None
    if len(tprs) >= 2:
        out["equal_opportunity_difference"] = max(tprs) - min(tprs)
        if out["equal_opportunity_difference"] > spec.equal_opportunity_max_diff:
            out["breaches"].append("equal_opportunity_difference")
    else:
        out["equal_opportunity_difference"] = None
    out["judged"] = len(rates) >= 2
    return out


def fairness_report(
    rows: list[dict[str, Any]], predictions: list[Any], truths: list[Any | None], spec: FairnessSpec
) -> dict[str, Any]:
    attributes = {
        attr: attribute_report([r.get(attr) for r in rows], predictions, truths, spec)
        for attr in spec.protected
    }
    return {
        "rows": len(rows),
        "favourable": spec.favourable,
        "min_group_size": spec.min_group_size,
        "thresholds": {
            "disparate_impact_min": spec.disparate_impact_min,
            "parity_max_diff": spec.parity_max_diff,
            "equal_opportunity_max_diff": spec.equal_opportunity_max_diff,
        },
        "attributes": attributes,
        "breached": any(a["breaches"] for a in attributes.values()),
    }
