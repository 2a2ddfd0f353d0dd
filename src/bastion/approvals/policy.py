"""A project's approval policy (``projects.<slug>.approvals``) and the rule of each change."""

from __future__ import annotations

from bastion.approvals.model import RULES, ApprovalAction
from bastion.settings import ApprovalPolicy, ApprovalRule, Settings

__all__ = ["policy_of", "rule_of", "rule_path"]


def policy_of(settings: Settings, project: str) -> ApprovalPolicy:
    """The approval policy of ``project`` (nothing governed when it has none)."""
    found = settings.projects.get(project)
    return found.approvals if found is not None else ApprovalPolicy()


def rule_of(policy: ApprovalPolicy, action: ApprovalAction) -> ApprovalRule:
    """The rule of ``policy`` that governs ``action``."""
    rule: ApprovalRule = getattr(policy, RULES[action])
    return rule


def rule_path(project: str, action: ApprovalAction) -> str:
    """Where the rule is configured: ``projects.<slug>.approvals.<rule>``."""
    return f"projects.{project}.approvals.{RULES[action]}"
