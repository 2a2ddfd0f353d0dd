"""Evals: golden datasets, scorers, and (in ``stats``, ``compare``, ``gate``, ``report``) the
paired comparison of a candidate with its baseline that gates a change in CI."""

from bastion.evals.datasets import DatasetError, DatasetVersion, Item, check_variables, load_items
from bastion.evals.scorers import (
    JudgeClient,
    JudgeError,
    Output,
    Score,
    Scorer,
    ScorerContext,
    ScorerError,
    make_scorer,
    scorer_types,
)

__all__ = [
    "DatasetError",
    "DatasetVersion",
    "Item",
    "JudgeClient",
    "JudgeError",
    "Output",
    "Score",
    "Scorer",
    "ScorerContext",
    "ScorerError",
    "check_variables",
    "load_items",
    "make_scorer",
    "scorer_types",
]
