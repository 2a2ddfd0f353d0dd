"""One-sided significance tests of the rollout analysis (standard library only).

Each guard metric is tested on the very statistic its threshold is about, so that what is
breached and what is significant are the same thing:

* error rate — :func:`two_proportion_z`: is the candidate's error rate above stable's? Pooled
  two-proportion z-test.
* tail latency and TTFT — :func:`fisher_exact`: the threshold is a limit on the tail (the
  candidate's p90 or p99 must stay under it), so the test asks whether a larger share of the
  candidate's requests than of stable's are slower than that limit; Fisher's exact test on
  the two counts. A whole-sample rank test (Mann-Whitney U) answers a different question —
  whether the bulk of the candidate is shifted at all — and with a candidate a tenth of a
  millisecond slower on every request (another alias, another classifier step) it is
  "significant" on a handful of samples, so one slow request that breaches the p90 of eight
  plus that irrelevant shift rolled a healthy canary back. Counting requests beyond the limit
  ignores shifts under the limit and catches a tail that grows on only some requests.
* cost per call and quality — :func:`welch_margin_z`: is the candidate's mean beyond the
  threshold (``mean_c > ratio x mean_s``; ``mean_c < (1 - drop) x mean_s``), with the
  uncertainty of both means (Welch's standard error, normal approximation)?

Each returns a :class:`TestResult` naming its test, so a report can say which test decided.
``p_value`` is one-sided: the chance of data at least this far in the candidate's disfavour
were the candidate within its threshold (or, for the error rate, as reliable as stable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ALPHA", "TestResult", "fisher_exact", "two_proportion_z", "welch_margin_z"]

ALPHA = 0.05  # one-sided significance level of every guard metric

TWO_PROPORTION = "two-proportion z-test (one-sided)"
FISHER = "Fisher's exact test on requests beyond the limit (one-sided)"
WELCH = "Welch z-test of the means against the threshold (one-sided)"


@dataclass(frozen=True, slots=True)
class TestResult:
    """The outcome of one test: its name, statistic (a z score where the test has one),
    one-sided p-value and sample sizes."""

    test: str
    z: float | None
    p_value: float
    n_stable: int
    n_candidate: int

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def to_dict(self) -> dict[str, Any]:
        return {
            "test": self.test,
            "z": self.z,
            "p_value": self.p_value,
            "alpha": ALPHA,
            "significant": self.significant,
            "n_stable": self.n_stable,
            "n_candidate": self.n_candidate,
        }


def _upper_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def two_proportion_z(
    errors_stable: int, n_stable: int, errors_candidate: int, n_candidate: int
) -> TestResult:
    """One-sided pooled z-test of "the candidate's error rate is above stable's"."""
    if n_stable < 1 or n_candidate < 1:
        raise ValueError("both arms need at least one request")
    pooled = (errors_stable + errors_candidate) / (n_stable + n_candidate)
    variance = pooled * (1 - pooled) * (1 / n_stable + 1 / n_candidate)
    z = 0.0
    if variance > 0:
        z = (errors_candidate / n_candidate - errors_stable / n_stable) / math.sqrt(variance)
    return TestResult(TWO_PROPORTION, z, _upper_tail(z), n_stable, n_candidate)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(
    beyond_stable: int, n_stable: int, beyond_candidate: int, n_candidate: int
) -> TestResult:
    """One-sided Fisher's exact test of "a larger share of the candidate's requests than of
    stable's is beyond the limit": the hypergeometric chance of at least
    ``beyond_candidate`` of all the requests beyond it falling on the candidate's arm."""
    if n_stable < 1 or n_candidate < 1:
        raise ValueError("both arms need at least one request")
    if not (0 <= beyond_stable <= n_stable and 0 <= beyond_candidate <= n_candidate):
        raise ValueError("counts beyond the limit must be between 0 and the arm's size")
    total, beyond = n_stable + n_candidate, beyond_stable + beyond_candidate
    whole = _log_comb(total, n_candidate)
    # Summed in log space: with tens of thousands of requests the integers get huge.
    terms = [
        _log_comb(beyond, x) + _log_comb(total - beyond, n_candidate - x) - whole
        for x in range(beyond_candidate, min(beyond, n_candidate) + 1)
    ]
    p_value = 0.0
    if terms:
        top = max(terms)
        p_value = min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))
    return TestResult(FISHER, None, p_value, n_stable, n_candidate)


def _mean_and_variance(values: Sequence[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def welch_margin_z(
    stable: Sequence[float], candidate: Sequence[float], factor: float, *, lower: bool = False
) -> TestResult:
    """One-sided z-test of "the candidate's mean is above ``factor`` x stable's" (``lower``:
    below it), with Welch's standard error of the difference. Without any spread the
    difference is certain: p is 0 beyond the threshold and 1 within it."""
    if not stable or not candidate:
        raise ValueError("both arms need at least one value")
    mean_s, var_s = _mean_and_variance(stable)
    mean_c, var_c = _mean_and_variance(candidate)
    beyond = mean_c - factor * mean_s
    if lower:
        beyond = -beyond
    error = math.sqrt(var_c / len(candidate) + factor**2 * var_s / len(stable))
    if error == 0:
        p_value = 0.0 if beyond > 0 else 1.0
        return TestResult(WELCH, None, p_value, len(stable), len(candidate))
    z = beyond / error
    return TestResult(WELCH, z, _upper_tail(z), len(stable), len(candidate))
