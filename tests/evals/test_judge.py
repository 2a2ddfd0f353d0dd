"""LLM-as-judge scorers against the real provider simulator on loopback.

The simulator answers a prompt line ``Reply with: X`` with exactly ``X`` (the last such line in
the whole prompt wins), so a test chooses the judge's verdict by putting the directive in the
output being judged, the rubric or the question.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from bastion.evals import (
    Item,
    JudgeClient,
    JudgeError,
    Output,
    Score,
    ScorerContext,
    ScorerError,
    make_scorer,
)
from bastion.evals.scorers import ScoreError
from bastion.providers.simulator import SimulatorConfig, SimulatorServer

KEY = "sim-key"
VERDICT = {"pass": True, "score": 0.9, "reason": "ok"}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(seed=3, api_key=KEY)) as server:
        yield server


def judge_for(sim: SimulatorServer, model: str = "sim-small", **kwargs: Any) -> JudgeClient:
    return JudgeClient(sim.url + "/v1", api_key=KEY, model=model, **kwargs)


def directive(verdict: Any) -> str:
    text = verdict if isinstance(verdict, str) else json.dumps(verdict)
    return f"Reply with: {text}"


def grade(
    sim: SimulatorServer,
    spec: Mapping[str, Any],
    text: str,
    item: Item | None = None,
    model: str = "sim-small",
) -> Score:
    async def go() -> Score:
        async with judge_for(sim, model) as judge:
            scorer = make_scorer(spec, context=ScorerContext(judge=judge))
            return await scorer.score(Output(text), item or Item("i", {"question": "Capital?"}))

    return asyncio.run(go())


def unjudged(
    sim: SimulatorServer,
    spec: Mapping[str, Any],
    text: str,
    item: Item | None = None,
    model: str = "sim-small",
) -> ScoreError:
    """The error of a scorer whose judge gave no readable verdict (no score at all)."""
    with pytest.raises(ScoreError) as caught:
        grade(sim, spec, text, item, model)
    return caught.value


# -- the client ---------------------------------------------------------------------------------


def test_client_calls_chat_completions_with_the_key(sim: SimulatorServer) -> None:
    async def go() -> tuple[str, str]:
        judge = judge_for(sim)  # no context manager: a session per call, closed after it
        reply = await judge.complete([{"role": "user", "content": "Reply with: hello there"}])
        return reply.text, reply.model

    text, served = asyncio.run(go())
    assert text == "hello there"
    assert served.startswith("sim-small")  # the simulator serves a dated snapshot
    assert "sim-key" not in repr(judge_for(sim))


def test_client_errors_are_judge_errors(sim: SimulatorServer) -> None:
    async def ask(client: JudgeClient) -> None:
        async with client:
            await client.complete([{"role": "user", "content": "hi"}])

    wrong_key = JudgeClient(sim.url + "/v1", api_key="wrong", model="sim-small")
    with pytest.raises(JudgeError, match="HTTP 401"):
        asyncio.run(ask(wrong_key))
    failing = judge_for(sim, "sim-small~error_rate=1~faults=500")
    with pytest.raises(JudgeError, match="HTTP 500"):
        asyncio.run(ask(failing))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = JudgeClient(f"http://127.0.0.1:{port}/v1", model="m", timeout_s=5)
    with pytest.raises(JudgeError, match="unreachable"):
        asyncio.run(ask(down))
    with pytest.raises(ScorerError, match="http"):
        JudgeClient("ftp://x", model="m")


# -- llm-rubric ---------------------------------------------------------------------------------


def test_rubric_verdict_from_the_judged_output(sim: SimulatorServer) -> None:
    text = "The capital is Paris.\n" + directive(VERDICT)
    score = grade(sim, {"type": "llm-rubric", "value": "Names the capital"}, text)
    assert (score.metric, score.value, score.passed, score.reason) == (
        "llm-rubric",
        0.9,
        True,
        "ok",
    )
    details = score.details
    assert details["judge_model"] == "sim-small"
    assert details["judge_served_model"].startswith("sim-small")
    assert details["judge_prompt_version"] == "llm-rubric/v1"
    assert details["judge_prompt_hash"].startswith("sha256:")
    assert json.loads(details["raw_verdict"]) == VERDICT
    assert details["verdict"] == {"pass": True, "score": 0.9}
    prompt = details["judge_prompt"]
    assert prompt[0]["role"] == "system"
    assert "Names the capital" in prompt[1]["content"]
    again = grade(sim, {"type": "llm-rubric", "value": "Names the capital"}, text)
    assert again.details["judge_prompt_hash"] == details["judge_prompt_hash"]
    other = grade(sim, {"type": "llm-rubric", "value": "Names a river"}, text)
    assert other.details["judge_prompt_hash"] != details["judge_prompt_hash"]


def test_rubric_with_the_directive_and_a_failing_verdict(sim: SimulatorServer) -> None:
    rubric = "Is polite.\n" + directive({"pass": False, "score": 0.1, "reason": "rude"})
    score = grade(sim, {"type": "llm-rubric", "value": rubric, "metric": "tone"}, "Go away.")
    assert (score.metric, score.value, score.passed, score.reason) == ("tone", 0.1, False, "rude")


@pytest.mark.parametrize(
    ("verdict", "value", "passed"),
    [
        ('Let me think. ```json {"pass": true, "score": 1, "reason": "fine"} ```', 1.0, True),
        ('Reasoning first... then {"PASS": "yes", "Score": "0.75"}', 0.75, True),
        ('{"score": 0.4}', 0.4, False),  # no pass: score against the default threshold 0.5
        ('{"pass": false}', 0.0, False),
        ('{"other": 1} and then {"pass": true, "score": 0.6, "reason": "later wins"}', 0.6, True),
    ],
)
def test_rubric_verdicts_parse_leniently(
    sim: SimulatorServer, verdict: str, value: float, passed: bool
) -> None:
    score = grade(sim, {"type": "llm-rubric", "value": "ok"}, directive(verdict))
    assert (score.value, score.passed) == (value, passed)


def test_rubric_threshold_raises_the_bar(sim: SimulatorServer) -> None:
    text = directive({"pass": True, "score": 0.6})
    assert grade(sim, {"type": "llm-rubric", "value": "ok"}, text).passed
    assert not grade(sim, {"type": "llm-rubric", "value": "ok", "threshold": 0.8}, text).passed


@pytest.mark.parametrize(
    ("verdict", "problem"),
    [
        ("I think it is fine", "no JSON object with 'pass' or 'score'"),
        ('{"pass": "perhaps"}', "'pass' is 'perhaps', not true or false"),
        ('{"pass": true, "score": 7}', "'score' is 7, outside [0, 1]"),
        ('{"pass": true, "score": "high"}', "'score' is 'high', not a number"),
    ],
)
def test_malformed_rubric_verdict_is_an_error_not_a_score(
    sim: SimulatorServer, verdict: str, problem: str
) -> None:
    error = unjudged(sim, {"type": "llm-rubric", "value": "ok"}, directive(verdict))
    assert str(error) == f"malformed judge verdict: {problem}"
    assert error.details["error"] == "malformed verdict"
    assert error.details["raw_verdict"] == verdict
    # Negated, an unreadable verdict neither passes nor fails: still no score.
    unjudged(sim, {"type": "not-llm-rubric", "value": "ok"}, directive(verdict))


def test_a_bad_judge_model_gives_a_malformed_verdict(sim: SimulatorServer) -> None:
    error = unjudged(
        sim,
        {"type": "llm-rubric", "value": "ok"},
        directive(VERDICT),
        model="sim-small~quality=bad",
    )
    assert str(error).startswith("malformed judge verdict")


def test_spec_model_overrides_the_client_model(sim: SimulatorServer) -> None:
    spec = {"type": "llm-rubric", "value": "ok", "model": "sim-large"}
    score = grade(sim, spec, directive(VERDICT))
    assert score.details["judge_model"] == "sim-large"
    assert score.details["judge_served_model"].startswith("sim-large")


# -- closed QA and factuality -------------------------------------------------------------------


def test_closedqa(sim: SimulatorServer) -> None:
    item = Item("q", {"question": "What is the capital of France?"}, expected="Paris")
    spec = {"type": "model-graded-closedqa"}
    yes = grade(sim, spec, "Paris. " + directive({"pass": True, "reason": "names Paris"}), item)
    assert (yes.value, yes.passed, yes.reason) == (1.0, True, "names Paris")
    prompt = yes.details["judge_prompt"][1]["content"]
    assert "[Task]: What is the capital of France?" in prompt
    assert "[Criterion]: Paris" in prompt
    assert yes.details["judge_prompt_version"] == "model-graded-closedqa/v1"
    no = grade(sim, spec, directive("The submission says Lyon, so: N"), item)
    assert (no.value, no.passed, no.reason) == (0.0, False, "The submission says Lyon, so:")
    bad = unjudged(sim, spec, directive("maybe"), item)
    assert str(bad) == "malformed judge verdict: no JSON object with 'pass' and no final Y or N"
    custom = {"type": "model-graded-closedqa", "value": "mentions {{ city }}", "question": "Q?"}
    score = grade(sim, custom, directive("Y"), Item("c", {"city": "Rome"}))
    assert score.passed
    assert "[Criterion]: mentions Rome" in score.details["judge_prompt"][1]["content"]


def test_judges_without_a_reference_fail_without_asking(sim: SimulatorServer) -> None:
    for kind in ("model-graded-closedqa", "factuality", "pairwise"):
        score = grade(sim, {"type": kind}, directive(VERDICT), Item("n", {"q": "x"}))
        assert not score.passed
        assert "no expected output" in score.reason
        assert score.details == {"error": "no reference"}


@pytest.mark.parametrize(
    ("verdict", "category", "value", "passed"),
    [
        ({"category": "C", "reason": "same details"}, "C", 1.0, True),
        ({"category": "(D)", "reason": "contradicts"}, "D", 0.0, False),
        ({"Answer": "b"}, "B", 1.0, True),
        ("(A) a consistent subset", "A", 1.0, True),
        ("Category: E", "E", 1.0, True),
        ("B. a consistent superset", "B", 1.0, True),
    ],
)
def test_factuality_categories(
    sim: SimulatorServer, verdict: Any, category: str, value: float, passed: bool
) -> None:
    item = Item("f", {"question": "Capital of France?"}, expected="Paris is the capital.")
    score = grade(sim, {"type": "factuality"}, "Paris.\n" + directive(verdict), item)
    assert (score.value, score.passed) == (value, passed)
    assert score.details["verdict"] == {"category": category}
    assert score.reason.startswith(f"({category})")
    assert "[Expert]: Paris is the capital." in score.details["judge_prompt"][1]["content"]


def test_factuality_custom_scores_and_bad_category(sim: SimulatorServer) -> None:
    item = Item("f", {"question": "Q"}, expected="A")
    spec = {"type": "factuality", "scores": {"e": 0.3}, "threshold": 0.5}
    score = grade(sim, spec, directive({"category": "E"}), item)
    assert (score.value, score.passed) == (0.3, False)
    bad = unjudged(sim, {"type": "factuality"}, directive({"category": "Z"}), item)
    assert str(bad) == "malformed judge verdict: category 'Z' is not one of A, B, C, D, E"
    prose = unjudged(sim, {"type": "factuality"}, directive("A submission that says A"), item)
    assert str(prose) == (
        "malformed judge verdict: no JSON object with 'category' and no (A)-(E) answer"
    )
    with pytest.raises(ScorerError, match="bad 'scores' entry 'F'"):
        asyncio.run(_make(sim, {"type": "factuality", "scores": {"F": 1}}))


async def _make(sim: SimulatorServer, spec: Mapping[str, Any]) -> None:
    async with judge_for(sim) as judge:
        make_scorer(spec, context=ScorerContext(judge=judge))


# -- pairwise -----------------------------------------------------------------------------------


def pairwise(
    sim: SimulatorServer, candidate: str, baseline: str, question: str = "Which city?"
) -> Score:
    item = Item("p", {"question": question}, expected=baseline)
    return grade(sim, {"type": "pairwise"}, candidate, item)


def test_pairwise_consistent_win_and_loss(sim: SimulatorServer) -> None:
    # The last directive in the prompt wins, and the prompt lists response A then B, so each
    # answer's directive speaks only when that answer is shown second.
    win = pairwise(
        sim, "Paris. " + directive({"winner": "B"}), "Lyon. " + directive({"winner": "A"})
    )
    assert (win.value, win.passed) == (1.0, True)
    assert win.details["verdict"] == {"forward": "A", "swapped": "B", "consistent": True}
    assert win.details["judge_prompt_hash"] != win.details["judge_prompt_hash_swapped"]
    loss = pairwise(
        sim, "Lyon. " + directive({"winner": "A"}), "Paris. " + directive({"winner": "B"})
    )
    assert (loss.value, loss.passed) == (0.0, False)
    assert loss.reason == "the baseline is preferred in both orders"


def test_pairwise_cancels_position_bias(sim: SimulatorServer) -> None:
    biased = pairwise(sim, "Paris.", "Lyon.", question="Which? " + directive({"winner": "A"}))
    assert biased.value == 0.5
    assert biased.details["verdict"] == {"forward": "A", "swapped": "A", "consistent": False}
    assert "position bias" in biased.reason
    tie = pairwise(sim, "Paris.", "Paris!", question="Which? " + directive({"winner": "tie"}))
    assert (tie.value, tie.passed, tie.reason) == (0.5, True, "a tie in both orders")


def test_pairwise_malformed_verdict(sim: SimulatorServer) -> None:
    item = Item("p", {"question": "Q " + directive({"winner": "C"})}, expected="y")
    error = unjudged(sim, {"type": "pairwise"}, "x", item)
    assert str(error) == "malformed judge verdict: 'winner' is 'C', not A, B or tie"
    assert error.details["raw_verdict_swapped"] == '{"winner": "C"}'
