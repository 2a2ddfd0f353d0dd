"""The analysis's significance tests against reference values (SciPy 1.17's ``fisher_exact``
and ``ttest_ind(equal_var=False)`` statistics, and the textbook pooled z-test)."""

from __future__ import annotations

import math

import pytest

from bastion.releases.significance import fisher_exact, two_proportion_z, welch_margin_z


def test_fisher_exact_matches_the_reference_one_sided_p_values() -> None:
    # (stable beyond the limit, stable requests, candidate beyond, candidate requests) -> p
    reference = {
        (0, 28, 1, 8): 0.2222222222222222,  # one slow request among eight: no evidence
        (0, 28, 8, 8): 3.304655532621246e-08,  # all eight slow: overwhelming
        (0, 100, 10, 100): 0.0007710260627178504,  # a tenth of the requests slow
        (1, 40, 2, 10): 0.09795918367346937,
        (3, 50000, 40, 50000): 1.5005984811379902e-09,  # large arms, in log space
    }
    for args, p_value in reference.items():
        result = fisher_exact(*args)
        assert result.p_value == pytest.approx(p_value, rel=1e-9), args
        assert result.test.startswith("Fisher's exact test")
    assert not fisher_exact(0, 28, 1, 8).significant
    assert fisher_exact(0, 100, 10, 100).significant
    # no request beyond the limit on either arm: nothing to see
    assert fisher_exact(0, 30, 0, 30).p_value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="between 0 and"):
        fisher_exact(0, 10, 11, 10)


def test_welch_margin_z_tests_the_mean_against_the_threshold() -> None:
    stable = [1.0, 1.1, 0.9, 1.05, 0.95] * 8
    # 30% dearer on average, a threshold of x1.2: beyond it, and clearly so with 40 calls each
    dearer = [v * 1.3 for v in stable]
    result = welch_margin_z(stable, dearer, 1.2)
    mean_s = sum(stable) / len(stable)
    var_s = sum((v - mean_s) ** 2 for v in stable) / (len(stable) - 1)
    z = (1.3 * mean_s - 1.2 * mean_s) / math.sqrt(1.69 * var_s / 40 + 1.44 * var_s / 40)
    assert result.z == pytest.approx(z)
    assert result.significant
    assert result.test.startswith("Welch z-test")
    # one expensive call among cheap ones moves the mean past x1.2, but not significantly
    outlier = [*stable[:-1], 12.0]
    assert sum(outlier) / len(outlier) > 1.2 * mean_s
    assert not welch_margin_z(stable, outlier, 1.2).significant
    # lower: quality scores below (1 - drop) x stable's mean
    scores_stable = [1.0] * 20
    assert welch_margin_z(scores_stable, [0.0, 1.0] * 10, 0.95, lower=True).significant
    assert not welch_margin_z(scores_stable, [1.0] * 19 + [0.0], 0.95, lower=True).significant
    # without spread the difference is certain
    certain = welch_margin_z([1.0] * 5, [2.0] * 5, 1.2)
    assert (certain.z, certain.p_value) == (None, 0.0)
    assert welch_margin_z([1.0] * 5, [1.1] * 5, 1.2).p_value == 1.0


def test_two_proportion_z() -> None:
    result = two_proportion_z(2, 100, 9, 30)
    pooled = 11 / 130
    z = (9 / 30 - 2 / 100) / math.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 30))
    assert result.z == pytest.approx(z)
    assert result.p_value == pytest.approx(6.723141939969928e-07, rel=1e-6)
    assert result.test.startswith("two-proportion z-test")
    assert (result.n_stable, result.n_candidate) == (100, 30)
    # one error among twenty against stable's 1%: not significant
    assert not two_proportion_z(2, 200, 1, 20).significant
    assert two_proportion_z(0, 10, 0, 10).p_value == 0.5
