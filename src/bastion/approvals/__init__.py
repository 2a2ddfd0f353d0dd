"""Approvals of risky changes: a change a project's policy governs (``projects.<slug>.approvals``
in bastion.yaml) needs a second person's approval, a passing eval gate, or both.

An approval is requested for one exact change (:class:`Change`, bound by its content hash),
decided by a person with the policy's role who did not ask for it, and used by the change
itself in the change's own transaction; each step is one transaction with its audit record.
"""

from bastion.approvals.changes import (
    current_label,
    deploy_change,
    label_move_change,
    promote_change,
    rollout_start_change,
    with_release_diff,
)
from bastion.approvals.gate import GateSubject, evaluate_gate
from bastion.approvals.model import (
    RULES,
    Approval,
    ApprovalAction,
    ApprovalError,
    ApprovalRequired,
    Change,
    Status,
)
from bastion.approvals.policy import policy_of, rule_of, rule_path
from bastion.approvals.store import (
    Decider,
    consume,
    decide,
    get_approval,
    list_approvals,
    request_approval,
    ttl_of,
)

__all__ = [
    "RULES",
    "Approval",
    "ApprovalAction",
    "ApprovalError",
    "ApprovalRequired",
    "Change",
    "Decider",
    "GateSubject",
    "Status",
    "consume",
    "current_label",
    "decide",
    "deploy_change",
    "evaluate_gate",
    "get_approval",
    "label_move_change",
    "list_approvals",
    "policy_of",
    "promote_change",
    "request_approval",
    "rollout_start_change",
    "rule_of",
    "rule_path",
    "ttl_of",
    "with_release_diff",
]
