"""LLM-as-judge scorers.

The judge is any OpenAI-compatible ``/v1/chat/completions`` endpoint: normally Bastion's own
gateway (so judge calls are traced and budgeted like any other), or a provider directly. Four
graders:

- ``llm-rubric``: does the output satisfy a rubric? Verdict ``{"pass", "score", "reason"}``.
- ``model-graded-closedqa``: does the output meet a criterion (default: the expected answer)
  for the question? Verdict ``{"pass", "reason"}`` (a final ``Y``/``N`` is accepted too).
- ``factuality``: how does the output compare with the expert answer, by the categories of
  OpenAI evals' ``fact`` template (A subset, B superset, C same, D disagrees, E differs
  harmlessly)? Verdict ``{"category", "reason"}``.
- ``pairwise``: is the output better than a baseline? Asked twice with the two answers
  swapped, so a judge that prefers a position cancels out: a win in both orders scores 1, a
  loss in both 0, anything else (tie, or a preference that follows the position) 0.5.

Verdicts are parsed leniently (JSON anywhere in the text, in a code fence or after some
reasoning); a verdict that cannot be understood raises :class:`ScoreError` naming the problem
(with the raw verdict in its details): the judge failed, not the output, so the run counts the
item as an error rather than scoring it 0. Transport failures (judge down, HTTP error) raise
:class:`JudgeError`: they say nothing about the output. Every score records the judge model,
the judge prompt, its version and hash, and the raw verdict in ``details``.

The client lives in :mod:`bastion.evals.scorers.judge_client` and the prompts and verdict
reading in :mod:`bastion.evals.scorers.judge_prompts`; the client and the errors are
re-exported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.evals.scorers.base import (
    Output,
    Score,
    ScoreError,
    ScorerError,
    as_text,
    clamp,
    render_value,
)
from bastion.evals.scorers.checks import check_keys
from bastion.evals.scorers.judge_client import JudgeClient, JudgeError, JudgeReply
from bastion.evals.scorers.judge_prompts import (
    CATEGORY,
    CLOSEDQA_SYSTEM,
    FACTUALITY_SYSTEM,
    PAIRWISE_SYSTEM,
    PROMPT_VERSIONS,
    RUBRIC_SYSTEM,
    YES_NO,
    VerdictError,
    as_bool,
    as_unit,
    judge_question,
    prompt_hash,
    verdict_object,
    verdict_reason,
)

if TYPE_CHECKING:
    from bastion.evals.datasets import Item
    from bastion.evals.scorers.registry import ScorerContext

__all__ = [
    "FACTUALITY_SCORES",
    "JudgeClient",
    "JudgeError",
    "JudgeReply",
    "JudgeScorer",
    "PairwiseScorer",
    "VerdictError",
    "factuality",
    "llm_rubric",
    "model_graded_closedqa",
    "pairwise",
]

FACTUALITY_SCORES: Mapping[str, float] = {"A": 1.0, "B": 1.0, "C": 1.0, "D": 0.0, "E": 1.0}


# -- scorers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JudgeScorer:
    """One model-graded metric: builds the judge prompt, asks the judge, reads the verdict."""

    name: str
    kind: str
    spec: Mapping[str, Any] = field(repr=False)
    judge: JudgeClient = field(repr=False)
    threshold: float | None = None
    category_scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The judge model asked (the spec's ``model``, else the client's)."""
        model = self.spec.get("model")
        return model if isinstance(model, str) and model else self.judge.model

    def messages(self, output: Output, item: Item) -> list[dict[str, str]] | None:
        """The judge prompt for ``output``, or None when the item lacks the reference this
        grader needs."""
        if self.kind == "llm-rubric":
            rubric = as_text(render_value(self.spec["value"], item))
            user = f"<output>\n{output.text}\n</output>\n\n<rubric>\n{rubric}\n</rubric>"
            return [
                {"role": "system", "content": RUBRIC_SYSTEM},
                {"role": "user", "content": user},
            ]
        reference = (
            render_value(self.spec["value"], item) if "value" in self.spec else item.expected
        )
        if reference is None:
            return None
        question = judge_question(self.spec, item)
        if self.kind == "model-graded-closedqa":
            user = (
                f"[BEGIN DATA]\n[Task]: {question}\n[Submission]: {output.text}\n"
                f"[Criterion]: {as_text(reference)}\n[END DATA]"
            )
            system = CLOSEDQA_SYSTEM
        else:
            user = (
                f"[BEGIN DATA]\n[Question]: {question}\n[Expert]: {as_text(reference)}\n"
                f"[Submission]: {output.text}\n[END DATA]"
            )
            system = FACTUALITY_SYSTEM
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def verdict(self, text: str) -> tuple[float, bool, str, dict[str, Any]]:
        """Value, verdict, reason and parsed fields from the judge's text.

        Raises:
            VerdictError: the text holds no verdict this grader understands.
        """
        if self.kind == "llm-rubric":
            found = verdict_object(text, ("pass", "passed", "score"))
            if found is None:
                raise VerdictError("no JSON object with 'pass' or 'score'")
            raw_pass = found.get("pass", found.get("passed"))
            verdict = None if raw_pass is None else as_bool(raw_pass, "pass")
            score = None if found.get("score") is None else as_unit(found["score"], "score")
            if score is None:
                score = 1.0 if verdict else 0.0
            threshold = 0.5 if self.threshold is None else self.threshold
            passed = score >= threshold if verdict is None else verdict
            if verdict is not None and self.threshold is not None:
                passed = verdict and score >= self.threshold
            parsed = {"pass": verdict, "score": score}
            return score, passed, verdict_reason(found) or f"score {score:g}", parsed
        if self.kind == "model-graded-closedqa":
            found = verdict_object(text, ("pass", "passed"))
            if found is not None:
                verdict = as_bool(found.get("pass", found.get("passed")), "pass")
                reason = verdict_reason(found)
            else:
                match = YES_NO.search(text.strip())
                if match is None:
                    raise VerdictError("no JSON object with 'pass' and no final Y or N")
                verdict = match.group(1).upper() == "Y"
                reason = text.strip()[: match.start()].strip()
            reason = reason or ("meets the criterion" if verdict else "misses the criterion")
            return float(verdict), verdict, reason, {"pass": verdict}
        found = verdict_object(text, ("category", "choice", "answer"))
        if found is not None:
            raw = found.get("category", found.get("choice", found.get("answer")))
            category = as_text(raw).strip().strip("()").upper()
            reason = verdict_reason(found)
        else:
            match = CATEGORY.search(text)
            if match is None:
                raise VerdictError("no JSON object with 'category' and no (A)-(E) answer")
            category = next(g for g in match.groups() if g)
            reason = text.strip()
        if category not in self.category_scores:
            raise VerdictError(f"category {category[:20]!r} is not one of A, B, C, D, E")
        value = self.category_scores[category]
        threshold = 0.5 if self.threshold is None else self.threshold
        passed = value >= threshold
        return value, passed, f"({category}) {reason}".strip(), {"category": category}

    async def score(self, output: Output, item: Item) -> Score:
        messages = self.messages(output, item)
        if messages is None:
            return Score(
                self.name,
                0.0,
                False,
                f"{self.kind}: no 'value' given and item {item.id!r} has no expected output",
                {"error": "no reference"},
            )
        reply = await self.judge.complete(messages, model=self.model)
        details: dict[str, Any] = {
            "judge_model": self.model,
            "judge_served_model": reply.model,
            "judge_prompt_version": PROMPT_VERSIONS[self.kind],
            "judge_prompt_hash": prompt_hash(messages),
            "judge_prompt": messages,
            "raw_verdict": reply.text,
        }
        try:
            value, passed, reason, parsed = self.verdict(reply.text)
        except VerdictError as exc:
            details["error"] = "malformed verdict"
            raise ScoreError(f"malformed judge verdict: {exc}", details) from exc
        details["verdict"] = parsed
        return Score(self.name, clamp(value), passed, reason, details)


@dataclass(frozen=True, slots=True)
class PairwiseScorer:
    """Preference between the output and a baseline (``value``, default the expected output),
    asked in both orders to cancel position bias."""

    name: str
    spec: Mapping[str, Any] = field(repr=False)
    judge: JudgeClient = field(repr=False)
    threshold: float = 0.5

    @property
    def model(self) -> str:
        """The judge model asked (the spec's ``model``, else the client's)."""
        model = self.spec.get("model")
        return model if isinstance(model, str) and model else self.judge.model

    @staticmethod
    def messages(question: str, first: str, second: str) -> list[dict[str, str]]:
        """The judge prompt showing ``first`` as response A and ``second`` as response B."""
        user = (
            f"<question>\n{question}\n</question>\n\n"
            f"<response_a>\n{first}\n</response_a>\n\n<response_b>\n{second}\n</response_b>"
        )
        return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]

    @staticmethod
    def winner(text: str) -> str:
        """``"A"``, ``"B"`` or ``"tie"`` from the judge's text.

        Raises:
            VerdictError: no such verdict in the text.
        """
        found = verdict_object(text, ("winner", "preferred", "better"))
        if found is None:
            raise VerdictError("no JSON object with 'winner'")
        raw = found.get("winner", found.get("preferred", found.get("better")))
        winner = as_text(raw).strip().strip("()").lower()
        if winner in {"a", "response a", "response_a"}:
            return "A"
        if winner in {"b", "response b", "response_b"}:
            return "B"
        if winner in {"tie", "equal", "none", "both", "draw"}:
            return "tie"
        raise VerdictError(f"'winner' is {raw!r}, not A, B or tie")

    async def compare(self, question: str, candidate: str, baseline: str) -> Score:
        """Whether ``candidate`` beats ``baseline``: 1 when it wins in both orders, 0 when it
        loses in both, 0.5 otherwise; passes at ``threshold`` (default 0.5: not worse)."""
        forward = self.messages(question, candidate, baseline)
        backward = self.messages(question, baseline, candidate)
        first, second = await asyncio.gather(
            self.judge.complete(forward, model=self.model),
            self.judge.complete(backward, model=self.model),
        )
        details: dict[str, Any] = {
            "judge_model": self.model,
            "judge_served_model": first.model,
            "judge_prompt_version": PROMPT_VERSIONS["pairwise"],
            "judge_prompt_hash": prompt_hash(forward),
            "judge_prompt_hash_swapped": prompt_hash(backward),
            "judge_prompt": forward,
            "raw_verdict": first.text,
            "raw_verdict_swapped": second.text,
        }
        try:
            one = self.winner(first.text)
            two = self.winner(second.text)
        except VerdictError as exc:
            details["error"] = "malformed verdict"
            raise ScoreError(f"malformed judge verdict: {exc}", details) from exc
        # In the swapped order the candidate is B.
        wins = (one == "A") + (two == "B")
        losses = (one == "B") + (two == "A")
        if wins == 2:
            value, reason = 1.0, "preferred over the baseline in both orders"
        elif losses == 2:
            value, reason = 0.0, "the baseline is preferred in both orders"
        elif wins == losses == 0:
            value, reason = 0.5, "a tie in both orders"
        elif wins == losses:
            value, reason = 0.5, "the judge preferred whichever came first/second (position bias)"
        else:
            value, reason = 0.5, "preferred in one order, a tie in the other"
        details["verdict"] = {
            "forward": one,
            "swapped": two,
            "consistent": wins == 2 or losses == 2 or wins == losses == 0,
        }
        return Score(self.name, value, value >= self.threshold, reason, details)

    async def score(self, output: Output, item: Item) -> Score:
        baseline = render_value(self.spec["value"], item) if "value" in self.spec else item.expected
        if baseline is None:
            return Score(
                self.name,
                0.0,
                False,
                f"pairwise: no 'value' given and item {item.id!r} has no expected output",
                {"error": "no reference"},
            )
        return await self.compare(judge_question(self.spec, item), output.text, as_text(baseline))


# -- factories ----------------------------------------------------------------------------------


def _judge(spec: Mapping[str, Any], context: ScorerContext | None) -> JudgeClient:
    kind = spec.get("type", "?")
    if context is None or context.judge is None:
        raise ScorerError(
            f"{kind}: needs an LLM judge: pass ScorerContext(judge=JudgeClient(base_url, "
            "model=...))"
        )
    model = spec.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise ScorerError(f"{kind}: 'model' must be a non-empty string, got {model!r}")
    return context.judge


def _optional_threshold(spec: Mapping[str, Any]) -> float | None:
    raw = spec.get("threshold")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0.0 <= raw <= 1.0:
        raise ScorerError(f"{spec.get('type', '?')}: 'threshold' must be in [0, 1], got {raw!r}")
    return float(raw)


def llm_rubric(spec: Mapping[str, Any], context: ScorerContext | None = None) -> JudgeScorer:
    """Grades the output against the rubric in ``value``; passes on the judge's ``pass`` (and
    ``score >= threshold`` when a threshold is given)."""
    check_keys(spec, {"value", "threshold", "model"})
    if not isinstance(spec.get("value"), str) or not spec["value"].strip():
        raise ScorerError("llm-rubric: 'value' (the rubric) must be a non-empty string")
    return JudgeScorer(
        "llm-rubric", "llm-rubric", spec, _judge(spec, context), _optional_threshold(spec)
    )


def model_graded_closedqa(
    spec: Mapping[str, Any], context: ScorerContext | None = None
) -> JudgeScorer:
    """Whether the output meets the criterion in ``value`` (default: the expected output) for
    the question (``question``, else the item's ``question``/``input``/``query``/``prompt``)."""
    check_keys(spec, {"value", "question", "model"})
    return JudgeScorer(
        "model-graded-closedqa", "model-graded-closedqa", spec, _judge(spec, context)
    )


def factuality(spec: Mapping[str, Any], context: ScorerContext | None = None) -> JudgeScorer:
    """The output's facts against the expert answer (``value``, default expected), graded A-E;
    ``scores`` overrides the value of each category (default D 0, others 1); passes at
    ``threshold`` (default 0.5)."""
    check_keys(spec, {"value", "question", "model", "threshold", "scores"})
    scores = dict(FACTUALITY_SCORES)
    overrides = spec.get("scores", {})
    if not isinstance(overrides, Mapping):
        raise ScorerError("factuality: 'scores' must map categories A-E to numbers in [0, 1]")
    for key, value in overrides.items():
        category = str(key).upper()
        if category not in scores or isinstance(value, bool) or not isinstance(value, int | float):
            raise ScorerError(f"factuality: bad 'scores' entry {key!r}: {value!r}")
        if not 0.0 <= value <= 1.0:
            raise ScorerError(f"factuality: score of {category} must be in [0, 1], got {value!r}")
        scores[category] = float(value)
    return JudgeScorer(
        "factuality", "factuality", spec, _judge(spec, context), _optional_threshold(spec), scores
    )


def pairwise(spec: Mapping[str, Any], context: ScorerContext | None = None) -> PairwiseScorer:
    """Preference for the output over a baseline (``value``, default expected), both orders."""
    check_keys(spec, {"value", "question", "model", "threshold"})
    threshold = _optional_threshold(spec)
    return PairwiseScorer(
        "pairwise", spec, _judge(spec, context), 0.5 if threshold is None else threshold
    )


pairwise.negatable = False  # type: ignore[attr-defined]
