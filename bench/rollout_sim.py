"""Simulated rollouts: time to detect a regression and false-rollback rate.

Compares the always-valid mSPRT (gateway/rollouts/stats.py) checked at every evaluation interval with
the fixed-horizon test checked at every interval (naive peeking), and, for reference, the fixed-horizon
test looked at once at the end. Two metrics, as the rollout evaluator reads them from the request log:

- error rate (two proportions; baseline 2 %, higher is worse),
- an online eval score (means; baseline 0.75, sd 0.20, lower is worse).

Each simulated rollout runs ``--intervals`` one-minute intervals at a total traffic rate; the candidate
takes ``--share`` of it. A rollback is the first check whose verdict is "worse". Effect 0 rows give the
false-rollback rate; the others give the detection rate within the horizon and the median minutes to
detect (from the start of the rollout). Seeded; runs in well under 60 s.

    .venv/bin/python bench/rollout_sim.py [--runs 300] [--intervals 120] [--alpha 0.05] [--seed 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.rollouts.stats import (
    Arm,
    TestResult,
    msprt_means,
    msprt_rates,
    two_proportions,
    welch_means,
)

Test = Callable[[Arm, Arm], TestResult]


@dataclass
class Outcome:
    alarms: int = 0
    worse: int = 0
    minutes: list[int] | None = None
    once_worse: int = 0


def _rate_arms(rng: np.random.Generator, runs: int, intervals: int, n: int, p: float) -> np.ndarray:
    """Cumulative (count, events) per run and interval: shape (runs, intervals, 2)."""
    events = rng.binomial(n, p, size=(runs, intervals)).cumsum(axis=1)
    counts = np.full((runs, intervals), n).cumsum(axis=1)
    return np.stack([counts, events], axis=2)


def _mean_arms(
    rng: np.random.Generator, runs: int, intervals: int, n: int, mu: float, sd: float
) -> np.ndarray:
    """Cumulative (count, sum, sum of squares) of normal scores, drawn exactly per interval."""
    means = rng.normal(mu, sd / np.sqrt(n), size=(runs, intervals))
    ss_within = sd * sd * rng.chisquare(n - 1, size=(runs, intervals))
    sums = (means * n).cumsum(axis=1)
    sumsq = (ss_within + n * means * means).cumsum(axis=1)
    counts = np.full((runs, intervals), n).cumsum(axis=1)
    return np.stack([counts, sums, sumsq], axis=2)


def _to_arm(row: np.ndarray) -> Arm:
    if row.shape[0] == 2:
        return Arm.from_counts(int(row[0]), int(row[1]))
    return Arm.from_sums(int(row[0]), float(row[1]), float(row[2]))


def _run(control: np.ndarray, candidate: np.ndarray, test: Test) -> Outcome:
    out = Outcome(minutes=[])
    runs, intervals = control.shape[0], control.shape[1]
    for r in range(runs):
        for i in range(intervals):
            res = test(_to_arm(control[r, i]), _to_arm(candidate[r, i]))
            if res.verdict in ("worse", "better"):
                out.alarms += 1
                if res.verdict == "worse":
                    out.worse += 1
                    assert out.minutes is not None
                    out.minutes.append(i + 1)
                break
        last = test(_to_arm(control[r, -1]), _to_arm(candidate[r, -1]))
        out.once_worse += last.verdict == "worse"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--intervals", type=int, default=120, help="one-minute checks per rollout")
    ap.add_argument("--share", type=float, default=0.10, help="candidate share of traffic")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--min-sample", type=int, default=100, help="per arm before any verdict")
    ap.add_argument("--rates", default="60,300,1200", help="total requests per minute")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    alpha, ms = args.alpha, args.min_sample
    started = time.perf_counter()

    def seq_rate(a: Arm, b: Arm) -> TestResult:
        return msprt_rates(a, b, alpha=alpha, direction="higher", min_sample=ms)

    def fix_rate(a: Arm, b: Arm) -> TestResult:
        return two_proportions(a, b, alpha=alpha, direction="higher", min_sample=ms)

    def seq_mean(a: Arm, b: Arm) -> TestResult:
        return msprt_means(a, b, alpha=alpha, direction="lower", min_sample=ms)

    def fix_mean(a: Arm, b: Arm) -> TestResult:
        return welch_means(a, b, alpha=alpha, direction="lower", min_sample=ms)

    scenarios = [
        ("error rate", [0.0, 0.01, 0.02, 0.05], seq_rate, fix_rate),
        ("eval score", [0.0, -0.02, -0.05, -0.10], seq_mean, fix_mean),
    ]
    print(
        f"runs={args.runs} per row, {args.intervals} one-minute checks, candidate share {args.share:.0%}, "
        f"alpha={alpha}, min sample {ms}/arm, seed {args.seed}"
    )
    header = (
        f"{'metric':<10} {'req/min':>7} {'effect':>7} | {'mSPRT every min':^24} | "
        f"{'fixed every min (peeking)':^26} | {'fixed once':>10}"
    )
    print(header)
    print(
        f"{'':<27}| {'rollback':>9} {'median min':>12}  | {'rollback':>9} {'median min':>14}  | {'rollback':>10}"
    )
    print("-" * len(header))
    for metric, effects, seq, fix in scenarios:
        for rate in [int(x) for x in args.rates.split(",")]:
            n_cand = max(1, round(rate * args.share))
            n_ctrl = rate - n_cand
            for effect in effects:
                if metric == "error rate":
                    ctrl = _rate_arms(rng, args.runs, args.intervals, n_ctrl, 0.02)
                    cand = _rate_arms(rng, args.runs, args.intervals, n_cand, 0.02 + effect)
                else:
                    ctrl = _mean_arms(rng, args.runs, args.intervals, n_ctrl, 0.75, 0.20)
                    cand = _mean_arms(rng, args.runs, args.intervals, n_cand, 0.75 + effect, 0.20)
                s, f = _run(ctrl, cand, seq), _run(ctrl, cand, fix)
                print(
                    f"{metric:<10} {rate:>7} {effect:>+7.2f} | {s.worse / args.runs:>9.1%} "
                    f"{_median(s.minutes):>12}  | {f.worse / args.runs:>9.1%} {_median(f.minutes):>14}  | "
                    f"{f.once_worse / args.runs:>10.1%}"
                )
    print(f"elapsed {time.perf_counter() - started:.1f} s")


def _median(xs: list[int] | None) -> str:
    return f"{statistics.median(xs):.0f}" if xs else "-"


if __name__ == "__main__":
    main()
