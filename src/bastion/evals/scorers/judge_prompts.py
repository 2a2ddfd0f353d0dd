"""What the judge is asked and how its answer is read: the graders' system prompts, their
versions and hashes, the question an item asks, and the lenient reading of a verdict (JSON
anywhere in the text, in a code fence or after some reasoning; a final ``Y``/``N`` or an
``(A)``-``(E)`` category)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bastion.evals.scorers.base import as_text, find_json, render_value

if TYPE_CHECKING:
    from bastion.evals.datasets import Item

__all__ = [
    "CATEGORY",
    "CLOSEDQA_SYSTEM",
    "FACTUALITY_SYSTEM",
    "PAIRWISE_SYSTEM",
    "PROMPT_VERSIONS",
    "QUESTION_KEYS",
    "RUBRIC_SYSTEM",
    "YES_NO",
    "VerdictError",
    "as_bool",
    "as_unit",
    "judge_question",
    "prompt_hash",
    "verdict_object",
    "verdict_reason",
]

QUESTION_KEYS = ("question", "input", "query", "prompt")


class VerdictError(ValueError):
    """The judge answered, but not with a verdict this grader understands."""


# -- prompts ------------------------------------------------------------------------------------

RUBRIC_SYSTEM = """You grade an AI system's output against a rubric.
Read the output and the rubric, decide whether the output satisfies the rubric, and give a
score from 0.0 (not at all) to 1.0 (fully).
Answer with only a JSON object: {"reason": "<one or two sentences>", "pass": true or false,
"score": <number from 0.0 to 1.0>}"""

CLOSEDQA_SYSTEM = """You assess whether a submitted answer meets a criterion.
Reason about the task, the submission and the criterion step by step, then answer with only a
JSON object: {"reason": "<your reasoning>", "pass": true or false}
("pass" is true when the submission meets the criterion)."""

FACTUALITY_SYSTEM = """You compare the factual content of a submitted answer with an expert
answer to the same question. Ignore differences in style, grammar or punctuation.
The submission is one of:
(A) a subset of the expert answer and fully consistent with it;
(B) a superset of the expert answer and fully consistent with it;
(C) the same details as the expert answer;
(D) in disagreement with the expert answer;
(E) different from the expert answer, but the differences do not matter for factuality.
Answer with only a JSON object: {"reason": "<your reasoning>", "category": "<A, B, C, D or E>"}"""

PAIRWISE_SYSTEM = """You compare two responses to the same question and decide which one is
better: more correct, more helpful, clearer. Do not let the order of the responses or their
length sway you.
Answer with only a JSON object: {"reason": "<your reasoning>", "winner": "A", "B" or "tie"}"""

PROMPT_VERSIONS: Mapping[str, str] = {
    "llm-rubric": "llm-rubric/v1",
    "model-graded-closedqa": "model-graded-closedqa/v1",
    "factuality": "factuality/v1",
    "pairwise": "pairwise/v1",
}


def prompt_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    body = json.dumps(list(messages), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def judge_question(spec: Mapping[str, Any], item: Item) -> str:
    if "question" in spec:
        return as_text(render_value(spec["question"], item))
    for key in QUESTION_KEYS:
        if key in item.vars:
            return as_text(item.vars[key])
    return as_text(dict(item.vars))


# -- verdicts -----------------------------------------------------------------------------------


def verdict_object(text: str, keys: Sequence[str]) -> Mapping[str, Any] | None:
    """The last JSON object in ``text`` having any of ``keys`` (case-insensitive)."""
    for value in reversed(find_json(text)):
        if isinstance(value, dict):
            lowered = {str(k).lower(): v for k, v in value.items()}
            if any(k in lowered for k in keys):
                return lowered
    return None


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "yes", "y", "pass", "1"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "no", "n", "fail", "0"}:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise VerdictError(f"{name!r} is {value!r}, not true or false")


def as_unit(value: Any, name: str) -> float:
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


def verdict_reason(verdict: Mapping[str, Any]) -> str:
    reason = verdict.get("reason", verdict.get("reasoning", verdict.get("explanation", "")))
    return as_text(reason).strip()


YES_NO = re.compile(r"(?:^|[\s.:*])\(?([YN])\)?[\s*.]*$", re.IGNORECASE)
# An upper-case letter after "category:"/"answer:", or starting a line as "(B)", "B." or "B"
# alone: "answer: a subset" or "A submission..." is no verdict.
CATEGORY = re.compile(
    r"(?i:category|answer|choice)\s*[:=]?\s*\(?([A-E])\)?(?![A-Za-z])"
    r"|^\s*(?:\(([A-E])\)|([A-E])(?:[.:)]|$))",
    re.MULTILINE,
)
