from __future__ import annotations

import math
import random
import statistics
import time

import pytest

from bastion.evals.stats import (
    mcnemar_exact,
    minimum_detectable_effect,
    normal_ppf,
    paired_bootstrap_ci,
)

# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_covers_a_known_shift() -> None:
    rng = random.Random(42)
    deltas = [0.1 + rng.gauss(0, 0.05) for _ in range(200)]
    mean, low, high = paired_bootstrap_ci(deltas, resamples=2_000, seed=1)
    assert mean == pytest.approx(statistics.fmean(deltas))
    assert low < 0.1 < high
    assert low < mean < high
    # Width close to the normal-theory interval 2 * 1.96 * sd / sqrt(n).
    expected = 2 * 1.96 * statistics.stdev(deltas) / math.sqrt(len(deltas))
    assert high - low == pytest.approx(expected, rel=0.15)
    assert low > 0  # the shift is clearly detected


def test_bootstrap_zero_variance_gives_zero_width() -> None:
    assert paired_bootstrap_ci([0.25] * 50) == (0.25, 0.25, 0.25)
    assert paired_bootstrap_ci([0.0] * 3) == (0.0, 0.0, 0.0)
    assert paired_bootstrap_ci([-1.0]) == (-1.0, -1.0, -1.0)


def test_bootstrap_is_deterministic_per_seed() -> None:
    deltas = [(-1) ** i * (i % 7) / 10 for i in range(300)]
    a = paired_bootstrap_ci(deltas, resamples=1_000, seed=7)
    b = paired_bootstrap_ci(deltas, resamples=1_000, seed=7)
    c = paired_bootstrap_ci(deltas, resamples=1_000, seed=8)
    assert a == b
    assert a != c
    assert a[0] == c[0]  # the point estimate does not depend on the seed


def test_bootstrap_resamples_every_item_uniformly() -> None:
    # Two values; the bootstrap mean of n draws of {0, 1} is Binomial(n, 1/2) / n.
    deltas = [0.0, 1.0] * 50
    mean, low, high = paired_bootstrap_ci(deltas, resamples=4_000, seed=3)
    assert mean == 0.5
    half_width = 1.96 * 0.5 / math.sqrt(100)
    assert low == pytest.approx(0.5 - half_width, abs=0.015)
    assert high == pytest.approx(0.5 + half_width, abs=0.015)


def test_bootstrap_confidence_level_narrows_the_interval() -> None:
    rng = random.Random(5)
    deltas = [rng.uniform(-1, 1) for _ in range(100)]
    _, lo95, hi95 = paired_bootstrap_ci(deltas, resamples=2_000)
    _, lo80, hi80 = paired_bootstrap_ci(deltas, resamples=2_000, confidence=0.8)
    assert lo95 < lo80 < hi80 < hi95


def test_bootstrap_coverage_under_the_null() -> None:
    """200 datasets with true mean delta 0: the 95% CI excludes 0 in roughly 5% of them."""
    rng = random.Random(2024)
    misses = 0
    for k in range(200):
        deltas = [rng.choice((-1.0, -0.5, 0.0, 0.0, 0.5, 1.0)) for _ in range(60)]
        _, low, high = paired_bootstrap_ci(deltas, resamples=400, seed=k)
        misses += not (low <= 0.0 <= high)
    assert 2 <= misses <= 20  # 1%..10%: neither always-covering nor badly anti-conservative


@pytest.mark.parametrize("n", [3, 1_000, 3_000, 6_000, 40_000])
def test_bootstrap_width_matches_normal_theory_for_any_size(n: int) -> None:
    # n = 3,000 rejects ~4% of table draws and n = 6,000 ~8% (redrawn); 40,000 uses choices.
    rng = random.Random(n)
    deltas = [rng.choice((-1.0, 0.0, 0.0, 1.0)) for _ in range(n)]
    resamples = 2_000 if n <= 6_000 else 100
    mean, low, high = paired_bootstrap_ci(deltas, resamples=resamples, seed=1)
    expected = 1.96 * statistics.pstdev(deltas) / math.sqrt(n)
    tol = 0.3 if n == 3 or n == 40_000 else 0.08
    assert mean - low == pytest.approx(expected, rel=tol)
    assert high - mean == pytest.approx(expected, rel=tol)


def test_bootstrap_table_path_agrees_with_plain_resampling() -> None:
    """The byte-table sampler is unbiased: its resample means match random.choices'."""
    from bastion.evals.stats import _bootstrap_means

    rng = random.Random(9)
    deltas = [rng.uniform(-0.5, 1) ** 3 for _ in range(3_000)]  # ~4% of table draws redrawn
    fast = _bootstrap_means(deltas, 2_000, random.Random(1))
    plain_rng = random.Random(2)
    plain = [statistics.fmean(plain_rng.choices(deltas, k=3_000)) for _ in range(1_000)]
    assert statistics.fmean(fast) == pytest.approx(statistics.fmean(deltas), abs=0.001)
    assert statistics.stdev(fast) == pytest.approx(statistics.stdev(plain), rel=0.1)


def test_bootstrap_falls_back_for_very_large_inputs() -> None:
    deltas = [float(i % 3 - 1) for i in range(70_000)]  # more than 65,536 items
    mean, low, high = paired_bootstrap_ci(deltas, resamples=20, seed=0)
    assert low < mean < high
    assert mean == pytest.approx(0.0, abs=1e-4)


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_ci([])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_ci([0.1, math.nan])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([0.1, 0.2], confidence=1.0)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_ci([0.1, 0.2], resamples=0)


def test_bootstrap_is_fast() -> None:
    rng = random.Random(0)
    deltas = [rng.gauss(0, 0.2) for _ in range(1_000)]
    start = time.perf_counter()
    paired_bootstrap_ci(deltas, resamples=10_000)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0  # ~0.5 s on the 2-core dev box; generous for shared CI runners


# --------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 5, 0.0625),  # 2 * (1/2)^5
        (5, 0, 0.0625),
        (2, 8, 0.109375),  # 2 * (1 + 10 + 45) / 1024
        (1, 1, 1.0),
        (3, 3, 1.0),  # capped at 1
        (0, 1, 1.0),
        (1, 9, 0.021484375),  # 2 * 11 / 1024
        (0, 10, 2 / 1024),
    ],
)
def test_mcnemar_exact_matches_hand_computed_binomials(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    assert mcnemar_exact(0, 0) == 1.0


def test_mcnemar_large_counts_use_log_space_consistently() -> None:
    exact = mcnemar_exact(950, 1050)  # n = 2,000: exact integer path
    logspace = mcnemar_exact(1450, 1560)  # n = 3,010: log-space path
    assert 0.02 < exact < 0.04  # z ~= 2.2
    assert 0.03 < logspace < 0.06  # z ~= 2.0
    assert mcnemar_exact(1500, 1500) == 1.0
    assert mcnemar_exact(0, 3_000) < 1e-300


def test_mcnemar_rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 2)


# --------------------------------------------------------------------------- MDE / normal_ppf


def test_minimum_detectable_effect_formula() -> None:
    z = 1.959963984540054 + 0.8416212335729143
    assert minimum_detectable_effect(0.3, 100) == pytest.approx(z * 0.3 / 10, rel=1e-9)
    assert minimum_detectable_effect(0.3, 400) == pytest.approx(z * 0.3 / 20, rel=1e-9)
    assert minimum_detectable_effect(0.0, 50) == 0.0
    assert math.isinf(minimum_detectable_effect(0.3, 0))
    stricter = minimum_detectable_effect(0.3, 100, alpha=0.01, power=0.9)
    assert stricter == pytest.approx((2.5758293035489 + 1.2815515655446) * 0.03, rel=1e-9)


@pytest.mark.parametrize(
    ("p", "z"),
    [
        (0.5, 0.0),
        (0.975, 1.959963984540054),
        (0.025, -1.959963984540054),
        (0.8, 0.8416212335729143),
        (0.995, 2.5758293035489004),
        (0.01, -2.3263478740408408),
        (1e-6, -4.753424308822899),
    ],
)
def test_normal_ppf_accuracy(p: float, z: float) -> None:
    assert normal_ppf(p) == pytest.approx(z, abs=1e-12)


def test_normal_ppf_agrees_with_the_stdlib_across_the_range() -> None:
    reference = statistics.NormalDist()
    for p in [1e-12, 1e-9, 0.001, 0.02425, 0.024, 0.1, 0.3, 0.6, 0.9, 0.97575, 0.9999, 1 - 1e-9]:
        assert normal_ppf(p) == pytest.approx(reference.inv_cdf(p), rel=1e-9, abs=1e-12), p


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5])
def test_normal_ppf_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError, match="p must be"):
        normal_ppf(p)
