"""Scorers: deterministic checks, embedding similarity and LLM-as-judge graders, built from
specs (``{"type": "contains", "value": "x"}``) through the ``bastion.scorers`` entry points."""

from bastion.evals.scorers.base import Output, Score, ScoreError, Scorer, ScorerError
from bastion.evals.scorers.judge import JudgeClient, JudgeError
from bastion.evals.scorers.registry import (
    ConfiguredScorer,
    ScorerContext,
    make_scorer,
    reload_scorers,
    scorer_types,
)

__all__ = [
    "ConfiguredScorer",
    "JudgeClient",
    "JudgeError",
    "Output",
    "Score",
    "ScoreError",
    "Scorer",
    "ScorerContext",
    "ScorerError",
    "make_scorer",
    "reload_scorers",
    "scorer_types",
]
