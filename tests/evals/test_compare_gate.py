from __future__ import annotations

import math
from collections.abc import Iterable

import pytest

from bastion.evals.compare import Comparison, ResultRow, RunResults, compare
from bastion.evals.gate import (
    EXIT_ERROR,
    EXIT_PASS,
    EXIT_REGRESSION,
    GateConfigError,
    GateRules,
    evaluate_gate,
)


def run(run_id: str, rows: Iterable[ResultRow], label: str = "summarize") -> RunResults:
    return RunResults(run_id=run_id, label=label, rows=tuple(rows))


def row(
    item: str,
    value: float,
    *,
    metric: str = "acc",
    repeat: int = 0,
    passed: bool | None = None,
    output: str | None = None,
) -> ResultRow:
    ok = value >= 0.5 if passed is None else passed
    return ResultRow(item, repeat, metric, value, ok, output=output)


def flat(n: int, value: float, metric: str = "acc") -> list[ResultRow]:
    return [row(f"i{k:03d}", value, metric=metric) for k in range(n)]


# --------------------------------------------------------------------------- compare


def test_repeats_are_averaged_per_item_before_pairing() -> None:
    base = run("b", [row("a", 1.0, repeat=0), row("a", 0.0, repeat=1), row("b", 1.0)])
    cand = run(
        "c",
        [
            row("a", 1.0, repeat=0),
            row("a", 1.0, repeat=1),
            row("a", 1.0, repeat=2),
            row("b", 0.5, repeat=0),
            row("b", 0.0, repeat=1),
        ],
    )
    cmp = compare(base, cand, resamples=200)
    (acc,) = cmp.metrics
    assert acc.n_items == 2  # items, not rows
    assert acc.baseline_mean == pytest.approx((0.5 + 1.0) / 2)
    assert acc.candidate_mean == pytest.approx((1.0 + 0.25) / 2)
    assert acc.delta == pytest.approx(((1.0 - 0.5) + (0.25 - 1.0)) / 2)
    # Pass rule: an item passes when >= half its repeats pass (a 1-1 tie passes).
    assert acc.baseline_pass_rate == 1.0  # a: 1 of 2 passed (tie), b: passed
    assert acc.candidate_pass_rate == 1.0  # a: 3/3, b: 0.5 passes, 0.0 fails -> tie passes
    assert (acc.mcnemar_b, acc.mcnemar_c, acc.mcnemar_p) == (0, 0, None)


def test_pass_fail_majority_feeds_mcnemar() -> None:
    base = run("b", [row(f"i{k}", 1.0) for k in range(10)])
    cand_rows = [row(f"i{k}", 0.0) for k in range(8)]  # 8 regressions
    cand_rows += [row("i8", 1.0), row("i9", 1.0)]
    # i9 has three repeats, two failing: majority fails -> a 9th regression.
    cand_rows += [row("i9", 0.0, repeat=1), row("i9", 0.0, repeat=2)]
    cmp = compare(base, run("c", cand_rows), resamples=200)
    (acc,) = cmp.metrics
    assert (acc.mcnemar_b, acc.mcnemar_c) == (9, 0)
    assert acc.mcnemar_p == pytest.approx(2 / 2**9)
    assert acc.candidate_pass_rate == pytest.approx(0.1)


def test_unpaired_items_are_reported_and_excluded() -> None:
    base = run("b", [row("a", 1.0), row("b", 1.0), row("only-base", 0.0)])
    cand = run("c", [row("a", 1.0), row("b", 0.0), row("only-cand", 1.0)])
    cmp = compare(base, cand, resamples=200)
    assert cmp.unpaired_items == ("only-base", "only-cand")
    (acc,) = cmp.metrics
    assert acc.n_items == 2
    assert acc.baseline_mean == 1.0
    assert acc.candidate_mean == 0.5


def test_items_missing_one_metric_are_unpaired_for_that_metric() -> None:
    base = run("b", [row("a", 1.0), row("a", 1.0, metric="tone"), row("b", 1.0)])
    cand = run("c", [row("a", 1.0), row("b", 1.0), row("b", 0.0, metric="tone")])
    cmp = compare(base, cand, resamples=200)
    assert [m.metric for m in cmp.metrics] == ["acc"]  # "tone" pairs no item
    assert cmp.unpaired_items == ("a", "b")


def test_metrics_keep_first_appearance_order() -> None:
    rows = [row("a", 1.0, metric="z"), row("a", 1.0, metric="a"), row("a", 1.0, metric="m")]
    cmp = compare(run("b", rows), run("c", rows), resamples=50)
    assert [m.metric for m in cmp.metrics] == ["z", "a", "m"]


def test_worst_items_are_the_most_regressed_first_at_most_ten() -> None:
    base = run("b", [row(f"i{k:02d}", 1.0, output=f"good {k}") for k in range(20)])
    cand_rows = [row(f"i{k:02d}", 1.0 - k / 20, output=f"bad {k}") for k in range(15)]
    cand_rows += [row(f"i{k:02d}", 1.0) for k in range(15, 20)]
    cmp = compare(base, run("c", cand_rows), resamples=200)
    worst = cmp.metrics[0].worst_items
    assert len(worst) == 10
    assert [w.item_id for w in worst] == [f"i{k:02d}" for k in range(14, 4, -1)]
    assert worst[0].delta == pytest.approx(-14 / 20)
    assert all(w.delta < 0 for w in worst)
    assert worst[0].baseline_output == "good 14"
    assert worst[0].candidate_output == "bad 14"


def test_no_regressions_means_no_worst_items() -> None:
    base = run("b", flat(5, 0.5))
    cand = run("c", flat(5, 0.7))
    assert compare(base, cand, resamples=50).metrics[0].worst_items == ()


def test_identical_runs_give_a_zero_width_interval() -> None:
    rows = flat(30, 0.8)
    (acc,) = compare(run("b", rows), run("c", rows)).metrics
    assert (acc.delta, acc.ci_low, acc.ci_high) == (0.0, 0.0, 0.0)
    assert acc.mde == 0.0


def test_single_item_has_undefined_mde() -> None:
    (acc,) = compare(run("b", [row("a", 0.2)]), run("c", [row("a", 0.4)])).metrics
    assert math.isinf(acc.mde)
    assert acc.delta == pytest.approx(0.2)


def test_compare_without_common_items_is_an_error() -> None:
    with pytest.raises(ValueError, match="nothing to compare"):
        compare(run("b", [row("a", 1.0)]), run("c", [row("z", 1.0)]))


def test_compare_is_deterministic() -> None:
    base = run("b", [row(f"i{k}", (k % 5) / 4) for k in range(50)])
    cand = run("c", [row(f"i{k}", (k % 3) / 2) for k in range(50)])
    assert compare(base, cand, seed=3) == compare(base, cand, seed=3)


# --------------------------------------------------------------------------- gate


def regressed(drop: float, n: int = 200) -> Comparison:
    """Half the items drop by ``2 * drop`` -> mean delta ``-drop``, with spread."""
    base = run("b", flat(n, 0.9))
    cand_rows = [row(f"i{k:03d}", 0.9 - (2 * drop if k % 2 else 0.0)) for k in range(n)]
    return compare(base, run("c", cand_rows), resamples=2_000)


def test_exit_code_constants() -> None:
    assert (EXIT_PASS, EXIT_REGRESSION, EXIT_ERROR) == (0, 1, 2)


def test_margin_passes_when_ci_stays_within_it() -> None:
    verdict = evaluate_gate(regressed(0.0), GateRules(margins={"acc": 0.02}))
    assert verdict.passed
    assert verdict.failures == ()
    assert verdict.exit_code == EXIT_PASS
    assert verdict.metric_passed("acc") is True


def test_margin_fails_when_ci_low_is_below_minus_margin() -> None:
    cmp = regressed(0.05)
    acc = cmp.metrics[0]
    assert acc.ci_low < -0.02
    verdict = evaluate_gate(cmp, GateRules(margins={"acc": 0.02}))
    assert not verdict.passed
    assert verdict.exit_code == EXIT_REGRESSION
    (failure,) = verdict.failures
    assert "acc" in failure
    assert "non-inferiority margin" in failure
    assert f"{acc.ci_low:+.3f}" in failure
    assert "0.020" in failure


def test_margin_judges_the_ci_not_the_point_estimate() -> None:
    """A noisy small dataset with a tiny mean drop is not shown non-inferior: it fails."""
    base = run("b", flat(40, 0.5))
    cand = run("c", [row(f"i{k:03d}", 0.8 if k % 2 else 0.18) for k in range(40)])
    cmp = compare(base, cand, resamples=2_000)
    acc = cmp.metrics[0]
    assert acc.delta == pytest.approx(-0.01)
    assert acc.ci_low < -0.05
    verdict = evaluate_gate(cmp, GateRules(margins={"acc": 0.02}))
    assert not verdict.passed
    assert any("too small to detect a 2-point drop" in w for w in verdict.warnings)


def test_default_margin_applies_to_every_metric_and_specific_wins() -> None:
    cmp = regressed(0.05)
    assert not evaluate_gate(cmp, GateRules(margins={"*": 0.02})).passed
    assert evaluate_gate(cmp, GateRules(margins={"*": 0.02, "acc": 0.2})).passed


def test_min_pass_rate_rule() -> None:
    base = run("b", flat(10, 1.0))
    cand = run("c", [row(f"i{k:03d}", 1.0 if k < 8 else 0.0) for k in range(10)])
    cmp = compare(base, cand, resamples=200)
    assert evaluate_gate(cmp, GateRules(min_pass_rate={"acc": 0.8})).passed
    verdict = evaluate_gate(cmp, GateRules(min_pass_rate={"*": 0.9}))
    assert not verdict.passed
    assert "pass rate 80.0%" in verdict.failures[0]
    assert "minimum 90.0%" in verdict.failures[0]


def test_threshold_rule() -> None:
    cmp = compare(run("b", flat(10, 0.9)), run("c", flat(10, 0.7)), resamples=200)
    assert evaluate_gate(cmp, GateRules(thresholds={"acc": 0.7})).passed
    verdict = evaluate_gate(cmp, GateRules(thresholds={"acc": 0.75}))
    assert not verdict.passed
    assert "0.700" in verdict.failures[0]
    assert "threshold 0.750" in verdict.failures[0]


def test_zero_tolerance_fails_on_any_candidate_failure_even_a_minority_repeat() -> None:
    base_rows = flat(5, 1.0) + flat(5, 1.0, metric="jailbreak")
    cand_rows = flat(5, 1.0) + flat(5, 1.0, metric="jailbreak")
    # One of three repeats fails: the item still passes by majority, but zero tolerance fails.
    cand_rows += [
        row("i000", 1.0, metric="jailbreak", repeat=1),
        row("i000", 0.0, metric="jailbreak", repeat=2),
    ]
    cmp = compare(run("b", base_rows), run("c", cand_rows), resamples=100)
    jail = next(m for m in cmp.metrics if m.metric == "jailbreak")
    assert jail.candidate_pass_rate == 1.0
    verdict = evaluate_gate(cmp, GateRules(zero_tolerance=("jailbreak",)))
    assert not verdict.passed
    (failure,) = verdict.failures
    assert "jailbreak" in failure
    assert "1 of 7" in failure
    assert "i000" in failure
    clean = compare(run("b", base_rows), run("c", base_rows), resamples=100)
    assert evaluate_gate(clean, GateRules(zero_tolerance=("jailbreak",))).passed


def test_rules_on_missing_metrics_fail() -> None:
    cmp = compare(run("b", flat(5, 1.0)), run("c", flat(5, 1.0)), resamples=50)
    verdict = evaluate_gate(cmp, GateRules(thresholds={"faithfulness": 0.5}))
    assert not verdict.passed
    assert "faithfulness" in verdict.failures[0]
    verdict = evaluate_gate(cmp, GateRules(zero_tolerance=("redteam",)))
    assert not verdict.passed
    assert "no candidate results" in verdict.failures[0]


def test_no_rules_pass_but_warn_about_small_datasets() -> None:
    base = run("b", [row(f"i{k}", float(k % 2)) for k in range(20)])
    cand = run("c", [row(f"i{k}", float((k // 2) % 2)) for k in range(20)])
    cmp = compare(base, cand, resamples=200)
    verdict = evaluate_gate(cmp, GateRules())
    assert verdict.passed
    assert verdict.metric_passed("acc") is None
    (warning,) = verdict.warnings
    assert "too small to detect a 5-point drop" in warning
    assert f"MDE {cmp.metrics[0].mde:.3f}" in warning


def test_large_low_variance_dataset_does_not_warn() -> None:
    cmp = compare(run("b", flat(500, 0.9)), run("c", flat(500, 0.9)), resamples=100)
    assert evaluate_gate(cmp, GateRules(margins={"*": 0.02})).warnings == ()


def test_unpaired_items_warn() -> None:
    cmp = compare(run("b", [row("a", 1.0), row("b", 1.0)]), run("c", [row("a", 1.0)]), resamples=50)
    verdict = evaluate_gate(cmp, GateRules())
    assert any("1 item(s) lack a counterpart" in w for w in verdict.warnings)


def test_several_failures_are_all_reported() -> None:
    cmp = regressed(0.25)  # half the items fall from 0.9 to 0.4: they fail
    verdict = evaluate_gate(
        cmp, GateRules(margins={"acc": 0.01}, thresholds={"acc": 0.95}, min_pass_rate={"*": 1})
    )
    assert len(verdict.failures) == 3
    assert {c.rule for c in verdict.checks if not c.passed} == {
        "margin",
        "threshold",
        "min_pass_rate",
    }


# --------------------------------------------------------------------------- config


def test_rules_from_mapping() -> None:
    rules = GateRules.from_mapping(
        {
            "margins": {"*": 0.02, "accuracy": 0.01},
            "min_pass_rate": {"*": 0.8},
            "thresholds": {"faithfulness": 0.7},
            "zero_tolerance": ["redteam.jailbreak"],
        }
    )
    assert rules == GateRules(
        margins={"*": 0.02, "accuracy": 0.01},
        min_pass_rate={"*": 0.8},
        thresholds={"faithfulness": 0.7},
        zero_tolerance=("redteam.jailbreak",),
    )
    assert GateRules.from_mapping({}) == GateRules()


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(GateConfigError, match=r"margin\b.*min_passrate|min_passrate.*margin\b"):
        GateRules.from_mapping({"margin": {"*": 0.1}, "min_passrate": {}, "thresholds": {}})


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"margins": 0.02}, "evals.gate.margins"),
        ({"margins": {"acc": "two"}}, "evals.gate.margins.acc"),
        ({"margins": {"acc": -0.1}}, "evals.gate.margins.acc"),
        ({"margins": {"acc": True}}, "evals.gate.margins.acc"),
        ({"min_pass_rate": {"acc": 1.5}}, "evals.gate.min_pass_rate.acc"),
        ({"thresholds": {"tone": math.nan}}, "evals.gate.thresholds.tone"),
        ({"zero_tolerance": "jailbreak"}, "evals.gate.zero_tolerance"),
        ({"zero_tolerance": ["ok", 3]}, "evals.gate.zero_tolerance"),
    ],
)
def test_invalid_config_values_name_the_key(data: dict[str, object], named: str) -> None:
    with pytest.raises(GateConfigError, match=named.replace(".", r"\.")):
        GateRules.from_mapping(data)


def test_gate_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        GateRules.from_mapping({"nope": 1})
