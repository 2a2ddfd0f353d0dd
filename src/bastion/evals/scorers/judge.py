"""LLM-as-judge scorers and the small client that calls the judge model.

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
reasoning); a verdict that cannot be understood is a failed score naming the problem, never an
exception. Transport failures (judge down, HTTP error) raise :class:`JudgeError`: they say
nothing about the output. Every score records the judge model, the judge prompt, its version
and hash, and the raw verdict in ``details``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp

from bastion.evals.scorers.base import (
    Output,
    Score,
    ScorerError,
    as_text,
    clamp,
    find_json,
    render_value,
)
from bastion.evals.scorers.deterministic import check_keys

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

_QUESTION_KEYS = ("question", "input", "query", "prompt")
FACTUALITY_SCORES: Mapping[str, float] = {"A": 1.0, "B": 1.0, "C": 1.0, "D": 0.0, "E": 1.0}


class JudgeError(RuntimeError):
    """The judge could not be asked: unreachable, an HTTP error, or a reply that is not a chat
    completion. Says nothing about the output being judged."""


class VerdictError(ValueError):
    """The judge answered, but not with a verdict this grader understands."""


@dataclass(frozen=True, slots=True)
class JudgeReply:
    """The judge's answer text, the model that served it and the whole response body."""

    text: str
    model: str
    raw: Mapping[str, Any] = field(repr=False)


class JudgeClient:
    """A minimal async client for an OpenAI-compatible chat completions endpoint.

    ``base_url`` ends where the OpenAI SDK's does (``http://host:port/v1``). Use it as an async
    context manager to share one connection pool across calls; without one, each call opens and
    closes its own session::

        async with JudgeClient("http://127.0.0.1:8000/v1", api_key=key, model="gpt-4o") as judge:
            scorer = make_scorer({"type": "llm-rubric", "value": "is polite"},
                                 context=ScorerContext(judge=judge))
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ScorerError(f"judge base_url must be an http(s) URL, got {base_url!r}")
        if not model:
            raise ScorerError("judge model is required")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"JudgeClient(base_url={self.base_url!r}, model={self.model!r})"

    def _new_session(self) -> aiohttp.ClientSession:
        headers = {"content-type": "application/json", **self.headers}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )

    async def __aenter__(self) -> JudgeClient:
        if self._session is None or self._session.closed:
            self._session = self._new_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the shared session, if one is open."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def complete(
        self, messages: Sequence[Mapping[str, Any]], *, model: str | None = None
    ) -> JudgeReply:
        """The judge's reply to ``messages``.

        Raises:
            JudgeError: the endpoint is unreachable, answers an HTTP error or no completion.
        """
        body: dict[str, Any] = {
            "model": model or self.model,
            "messages": list(messages),
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        url = self.base_url + "/chat/completions"
        if self._session is not None and not self._session.closed:
            return await self._post(self._session, url, body)
        async with self._new_session() as session:
            return await self._post(session, url, body)

    async def _post(
        self, session: aiohttp.ClientSession, url: str, body: Mapping[str, Any]
    ) -> JudgeReply:
        try:
            async with session.post(url, data=json.dumps(body)) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise JudgeError(f"judge at {url} unreachable: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            snippet = payload[:300].decode("utf-8", "replace")
            raise JudgeError(f"judge at {url} answered HTTP {status}: {snippet}")
        try:
            data = json.loads(payload)
            message = data["choices"][0]["message"]
            text = message.get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(
                f"judge at {url} answered something that is not a chat completion: "
                f"{payload[:200].decode('utf-8', 'replace')}"
            ) from None
        if not isinstance(text, str):
            text = as_text(text)
        served = data.get("model") if isinstance(data.get("model"), str) else body["model"]
        return JudgeReply(text=text, model=str(served), raw=data)


# -- verdict parsing ----------------------------------------------------------------------------


def _verdict_object(text: str, keys: Sequence[str]) -> Mapping[str, Any] | None:
    """The last JSON object in ``text`` having any of ``keys`` (case-insensitive)."""
    for value in reversed(find_json(text)):
        if isinstance(value, dict):
            lowered = {str(k).lower(): v for k, v in value.items()}
            if any(k in lowered for k in keys):
                return lowered
    return None


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "yes", "y", "pass", "1"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "no", "n", "fail", "0"}:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise VerdictError(f"{name!r} is {value!r}, not true or false")


def _as_unit(value: Any, name: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise VerdictError(f"{name!r} is {value!r}, not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise VerdictError(f"{name!r} is {value!r}, not a number")
    if not 0.0 <= value <= 1.0:
        raise VerdictError(f"{name!r} is {value!r}, outside [0, 1]")
    return float(value)


def _reason(verdict: Mapping[str, Any]) -> str:
    reason = verdict.get("reason", verdict.get("reasoning", verdict.get("explanation", "")))
    return as_text(reason).strip()


_YES_NO = re.compile(r"(?:^|[\s.:*])\(?([YN])\)?[\s*.]*$", re.IGNORECASE)
# An upper-case letter after "category:"/"answer:", or starting a line as "(B)", "B." or "B"
# alone: "answer: a subset" or "A submission..." is no verdict.
_CATEGORY = re.compile(
    r"(?i:category|answer|choice)\s*[:=]?\s*\(?([A-E])\)?(?![A-Za-z])"
    r"|^\s*(?:\(([A-E])\)|([A-E])(?:[.:)]|$))",
    re.MULTILINE,
)


# -- prompts ------------------------------------------------------------------------------------

_RUBRIC_SYSTEM = """You grade an AI system's output against a rubric.
Read the output and the rubric, decide whether the output satisfies the rubric, and give a
score from 0.0 (not at all) to 1.0 (fully).
Answer with only a JSON object: {"reason": "<one or two sentences>", "pass": true or false,
"score": <number from 0.0 to 1.0>}"""

_CLOSEDQA_SYSTEM = """You assess whether a submitted answer meets a criterion.
Reason about the task, the submission and the criterion step by step, then answer with only a
JSON object: {"reason": "<your reasoning>", "pass": true or false}
("pass" is true when the submission meets the criterion)."""

_FACTUALITY_SYSTEM = """You compare the factual content of a submitted answer with an expert
answer to the same question. Ignore differences in style, grammar or punctuation.
The submission is one of:
(A) a subset of the expert answer and fully consistent with it;
(B) a superset of the expert answer and fully consistent with it;
(C) the same details as the expert answer;
(D) in disagreement with the expert answer;
(E) different from the expert answer, but the differences do not matter for factuality.
Answer with only a JSON object: {"reason": "<your reasoning>", "category": "<A, B, C, D or E>"}"""

_PAIRWISE_SYSTEM = """You compare two responses to the same question and decide which one is
better: more correct, more helpful, clearer. Do not let the order of the responses or their
length sway you.
Answer with only a JSON object: {"reason": "<your reasoning>", "winner": "A", "B" or "tie"}"""

PROMPT_VERSIONS: Mapping[str, str] = {
    "llm-rubric": "llm-rubric/v1",
    "model-graded-closedqa": "model-graded-closedqa/v1",
    "factuality": "factuality/v1",
    "pairwise": "pairwise/v1",
}


def _prompt_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    body = json.dumps(list(messages), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def _question(spec: Mapping[str, Any], item: Item) -> str:
    if "question" in spec:
        return as_text(render_value(spec["question"], item))
    for key in _QUESTION_KEYS:
        if key in item.vars:
            return as_text(item.vars[key])
    return as_text(dict(item.vars))


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
                {"role": "system", "content": _RUBRIC_SYSTEM},
                {"role": "user", "content": user},
            ]
        reference = (
            render_value(self.spec["value"], item) if "value" in self.spec else item.expected
        )
        if reference is None:
            return None
        question = _question(self.spec, item)
        if self.kind == "model-graded-closedqa":
            user = (
                f"[BEGIN DATA]\n[Task]: {question}\n[Submission]: {output.text}\n"
                f"[Criterion]: {as_text(reference)}\n[END DATA]"
            )
            system = _CLOSEDQA_SYSTEM
        else:
            user = (
                f"[BEGIN DATA]\n[Question]: {question}\n[Expert]: {as_text(reference)}\n"
                f"[Submission]: {output.text}\n[END DATA]"
            )
            system = _FACTUALITY_SYSTEM
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def verdict(self, text: str) -> tuple[float, bool, str, dict[str, Any]]:
        """Value, verdict, reason and parsed fields from the judge's text.

        Raises:
            VerdictError: the text holds no verdict this grader understands.
        """
        if self.kind == "llm-rubric":
            found = _verdict_object(text, ("pass", "passed", "score"))
            if found is None:
                raise VerdictError("no JSON object with 'pass' or 'score'")
            raw_pass = found.get("pass", found.get("passed"))
            verdict = None if raw_pass is None else _as_bool(raw_pass, "pass")
            score = None if found.get("score") is None else _as_unit(found["score"], "score")
            if score is None:
                score = 1.0 if verdict else 0.0
            threshold = 0.5 if self.threshold is None else self.threshold
            passed = score >= threshold if verdict is None else verdict
            if verdict is not None and self.threshold is not None:
                passed = verdict and score >= self.threshold
            parsed = {"pass": verdict, "score": score}
            return score, passed, _reason(found) or f"score {score:g}", parsed
        if self.kind == "model-graded-closedqa":
            found = _verdict_object(text, ("pass", "passed"))
            if found is not None:
                verdict = _as_bool(found.get("pass", found.get("passed")), "pass")
                reason = _reason(found)
            else:
                match = _YES_NO.search(text.strip())
                if match is None:
                    raise VerdictError("no JSON object with 'pass' and no final Y or N")
                verdict = match.group(1).upper() == "Y"
                reason = text.strip()[: match.start()].strip()
            reason = reason or ("meets the criterion" if verdict else "misses the criterion")
            return float(verdict), verdict, reason, {"pass": verdict}
        found = _verdict_object(text, ("category", "choice", "answer"))
        if found is not None:
            raw = found.get("category", found.get("choice", found.get("answer")))
            category = as_text(raw).strip().strip("()").upper()
            reason = _reason(found)
        else:
            match = _CATEGORY.search(text)
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
            "judge_prompt_hash": _prompt_hash(messages),
            "judge_prompt": messages,
            "raw_verdict": reply.text,
        }
        try:
            value, passed, reason, parsed = self.verdict(reply.text)
        except VerdictError as exc:
            details["error"] = "malformed verdict"
            return Score(self.name, 0.0, False, f"malformed judge verdict: {exc}", details)
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
        return [{"role": "system", "content": _PAIRWISE_SYSTEM}, {"role": "user", "content": user}]

    @staticmethod
    def winner(text: str) -> str:
        """``"A"``, ``"B"`` or ``"tie"`` from the judge's text.

        Raises:
            VerdictError: no such verdict in the text.
        """
        found = _verdict_object(text, ("winner", "preferred", "better"))
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
            "judge_prompt_hash": _prompt_hash(forward),
            "judge_prompt_hash_swapped": _prompt_hash(backward),
            "judge_prompt": forward,
            "raw_verdict": first.text,
            "raw_verdict_swapped": second.text,
        }
        try:
            one = self.winner(first.text)
            two = self.winner(second.text)
        except VerdictError as exc:
            details["error"] = "malformed verdict"
            return Score(self.name, 0.0, False, f"malformed judge verdict: {exc}", details)
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
        return await self.compare(_question(self.spec, item), output.text, as_text(baseline))


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
