"""Retention and erasure: how long stored data is kept, and removing one subject's data.

- :mod:`~bastion.retention.policy`: the periods per project (``retention:`` and
  ``projects.<slug>.retention`` in ``bastion.yaml``);
- :mod:`~bastion.retention.passes`: a pass applying them in short batches (spans with their
  trace summaries, payloads, per-item eval results and scores), or counting (a dry run);
- :mod:`~bastion.retention.job`: the server's background job running passes;
- :mod:`~bastion.retention.erasure`: :func:`erase`, one user's, session's or trace's data
  and what was made from it, with a summary fit for an audit record.

Sits above the store (and below the server and the CLI, which drive it).
"""

from bastion.retention.erasure import (
    SUBJECTS,
    ErasureBusy,
    ErasureError,
    ErasureRequest,
    ErasureSummary,
    erase,
)
from bastion.retention.job import RetentionJob, wants_job
from bastion.retention.passes import RetentionError, apply, plan
from bastion.retention.policy import KINDS, Kind, Policy, policy_for
from bastion.retention.report import KindResult, PassReport, Progress

__all__ = [
    "KINDS",
    "SUBJECTS",
    "ErasureBusy",
    "ErasureError",
    "ErasureRequest",
    "ErasureSummary",
    "Kind",
    "KindResult",
    "PassReport",
    "Policy",
    "Progress",
    "RetentionError",
    "RetentionJob",
    "apply",
    "erase",
    "plan",
    "policy_for",
    "wants_job",
]
