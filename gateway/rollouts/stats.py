"""Decision statistics for rollouts: pure functions over per-arm summaries.

Two families:

- **Always-valid (sequential)**: the mixture sequential probability ratio test (mSPRT) with a normal
  mixture over the effect, as in Johari, Pekelis, Walsh, "Always valid inference" (2017). The
  statistic may be checked after every interval; the chance that it *ever* crosses ``1/alpha`` when
  the arms are equal is at most ``alpha`` (Ville's inequality), so peeking does not inflate false
  alarms. Means use the Gaussian approximation of the difference of means; rates use the same with
  the Bernoulli variance (a two-proportion mSPRT).
- **Fixed-horizon**: Welch's t-test for means and the pooled two-proportion z-test for rates. They
  are valid only when looked at once, at a horizon fixed in advance; ``bench/rollout_sim.py`` shows
  what checking them at every interval (naive peeking) does to the false-rollback rate.

Arms are summaries (count, mean, variance), so the evaluator reads them with SQL aggregates and a
check costs microseconds. ``direction`` says which way is worse: ``"lower"`` when a lower candidate
mean is worse (an eval score), ``"higher"`` when a higher one is (error rate, latency, cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Direction = Literal["lower", "higher", "either"]  # either: any significant difference is worse
Verdict = Literal["worse", "better", "inconclusive", "insufficient"]


@dataclass(frozen=True)
class Arm:
    """Summary of one arm: sample size, mean and (unbiased) sample variance."""

    n: int
    mean: float
    var: float

    @classmethod
    def from_values(cls, values: list[float]) -> Arm:
        n = len(values)
        if n == 0:
            return cls(0, 0.0, 0.0)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, var)

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> Arm:
        """From count, sum and sum of squares (what ``SELECT count(), sum(x), sum(x*x)`` returns)."""
        if n == 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        var = max(total_sq - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, var)

    @classmethod
    def from_counts(cls, n: int, successes: int) -> Arm:
        """A rate arm: ``successes`` events (e.g. errors) out of ``n``."""
        if n == 0:
            return cls(0, 0.0, 0.0)
        p = successes / n
        return cls(n, p, p * (1.0 - p))


@dataclass(frozen=True)
class TestResult:
    """Outcome of one check, with the figures an audit entry needs."""

    test: str
    alpha: float
    n_control: int
    n_candidate: int
    mean_control: float
    mean_candidate: float
    difference: float  # candidate - control
    statistic: float  # mSPRT likelihood ratio, or t / z
    p_value: float
    verdict: Verdict

    def as_evidence(self) -> dict[str, object]:
        return {
            "test": self.test,
            "alpha": self.alpha,
            "n_control": self.n_control,
            "n_candidate": self.n_candidate,
            "mean_control": round(self.mean_control, 6),
            "mean_candidate": round(self.mean_candidate, 6),
            "difference": round(self.difference, 6),
            "statistic": round(self.statistic, 6) if math.isfinite(self.statistic) else None,
            "p_value": round(self.p_value, 8),
            "verdict": self.verdict,
        }


def _verdict(significant: bool, difference: float, direction: Direction) -> Verdict:
    if not significant or difference == 0:
        return "inconclusive"
    if direction == "either":
        return "worse"
    worse = difference < 0 if direction == "lower" else difference > 0
    return "worse" if worse else "better"


def _result(
    test: str, alpha: float, control: Arm, candidate: Arm, statistic: float, p_value: float, verdict: Verdict
) -> TestResult:
    return TestResult(
        test=test,
        alpha=alpha,
        n_control=control.n,
        n_candidate=candidate.n,
        mean_control=control.mean,
        mean_candidate=candidate.mean,
        difference=candidate.mean - control.mean,
        statistic=statistic,
        p_value=p_value,
        verdict=verdict,
    )


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def msprt_log_lr(difference: float, var_estimate: float, tau2: float) -> float:
    """log of the normal-mixture likelihood ratio for ``difference ~ N(theta, var_estimate)``,
    ``theta ~ N(0, tau2)`` against ``theta = 0``."""
    v, t = var_estimate, tau2
    return 0.5 * math.log(v / (v + t)) + difference * difference * t / (2.0 * v * (v + t))


def _msprt(
    control: Arm,
    candidate: Arm,
    var_control: float,
    var_candidate: float,
    tau: float,
    alpha: float,
    direction: Direction,
    min_sample: int,
    name: str,
) -> TestResult:
    _check_alpha(alpha)
    diff = candidate.mean - control.mean
    name_ = name
    if min(control.n, candidate.n) < max(min_sample, 2):
        return _result(name_, alpha, control, candidate, 1.0, 1.0, "insufficient")
    var_est = var_control / control.n + var_candidate / candidate.n
    if var_est <= 0.0:
        # Both arms constant: any difference is certain, none is no evidence.
        lr = math.inf if diff != 0 else 1.0
    else:
        lr = math.exp(min(msprt_log_lr(diff, var_est, tau * tau), 700.0))
    p_value = min(1.0, 1.0 / lr)
    verdict = _verdict(lr >= 1.0 / alpha, diff, direction)
    return _result(name_, alpha, control, candidate, lr, p_value, verdict)


def msprt_means(
    control: Arm,
    candidate: Arm,
    *,
    alpha: float = 0.05,
    direction: Direction = "lower",
    tau: float | None = None,
    min_sample: int = 30,
) -> TestResult:
    """Always-valid test of equal means. ``tau`` is the mixture scale in the metric's units (the size
    of effect the test is most sensitive to); default: a quarter of the pooled standard deviation."""
    pooled_var = (control.var + candidate.var) / 2.0
    scale = tau if tau is not None else 0.25 * math.sqrt(pooled_var)
    if scale <= 0.0:
        scale = 1e-9
    return _msprt(
        control, candidate, control.var, candidate.var, scale, alpha, direction, min_sample, "msprt_means"
    )


def msprt_rates(
    control: Arm,
    candidate: Arm,
    *,
    alpha: float = 0.05,
    direction: Direction = "higher",
    tau: float | None = None,
    min_sample: int = 30,
) -> TestResult:
    """Always-valid two-proportion test. Variance of each arm from the pooled rate (equal under the
    null), floored so that a run of zero events still has a finite scale. ``tau`` is the mixture scale
    in rate units; default: half the pooled standard deviation ``sqrt(p(1-p))``."""
    n = control.n + candidate.n
    pooled = (control.mean * control.n + candidate.mean * candidate.n) / n if n else 0.0
    floor = 1.0 / max(n, 1)
    p = min(max(pooled, floor), 1.0 - floor)
    var = p * (1.0 - p)
    scale = tau if tau is not None else 0.5 * math.sqrt(var)
    return _msprt(control, candidate, var, var, scale, alpha, direction, min_sample, "msprt_rates")


def welch_means(
    control: Arm,
    candidate: Arm,
    *,
    alpha: float = 0.05,
    direction: Direction = "lower",
    min_sample: int = 2,
) -> TestResult:
    """Fixed-horizon two-sided Welch t-test (valid at one look only)."""
    _check_alpha(alpha)
    diff = candidate.mean - control.mean
    name_ = "welch"
    if min(control.n, candidate.n) < max(min_sample, 2):
        return _result(name_, alpha, control, candidate, 0.0, 1.0, "insufficient")
    va, vb = control.var / control.n, candidate.var / candidate.n
    if va + vb <= 0.0:
        p_value = 0.0 if diff != 0 else 1.0
        t = math.inf if diff != 0 else 0.0
    else:
        t = diff / math.sqrt(va + vb)
        df = (va + vb) ** 2 / (
            (va * va / (control.n - 1) if va else 0.0) + (vb * vb / (candidate.n - 1) if vb else 0.0)
        )
        # scipy only here: the request path imports this module and must not load scipy (~100 MB)
        from scipy import special

        p_value = float(2.0 * special.stdtr(df, -abs(t)))
    verdict = _verdict(p_value < alpha, diff, direction)
    return _result(name_, alpha, control, candidate, t, p_value, verdict)


def two_proportions(
    control: Arm,
    candidate: Arm,
    *,
    alpha: float = 0.05,
    direction: Direction = "higher",
    min_sample: int = 2,
) -> TestResult:
    """Fixed-horizon two-sided pooled two-proportion z-test (valid at one look only)."""
    _check_alpha(alpha)
    diff = candidate.mean - control.mean
    name_ = "two_proportions"
    if min(control.n, candidate.n) < max(min_sample, 1):
        return _result(name_, alpha, control, candidate, 0.0, 1.0, "insufficient")
    n = control.n + candidate.n
    pooled = (control.mean * control.n + candidate.mean * candidate.n) / n
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / control.n + 1.0 / candidate.n))
    if se == 0.0:
        z, p_value = 0.0, 1.0
    else:
        z = diff / se
        p_value = math.erfc(abs(z) / math.sqrt(2.0))
    verdict = _verdict(p_value < alpha, diff, direction)
    return _result(name_, alpha, control, candidate, z, p_value, verdict)
