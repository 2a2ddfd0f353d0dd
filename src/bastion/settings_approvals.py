"""The approval policy of one project (``projects.<slug>.approvals``), part of
:class:`bastion.settings.ProjectSettings`.

Kept apart from ``bastion.settings`` so that module stays readable; ``bastion.settings``
re-exports these models, import them from there.

```yaml
projects:
  default:
    approvals:
      protected_labels: [production]   # also every label protected with `prompts protect`
      label_move:                      # moving a protected label
        approver_role: admin           # a second person, at least an admin, never the requester
        eval_gate: {dataset: golden}   # and the new version passes the eval gate on golden
      rollout_start: {approver_role: admin}     # starting a rollout, and a deploy
      rollout_promote: {approver_role: owner}   # promoting a rollout by hand
      expires_after_h: 72
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bastion import names

__all__ = ["ApprovalPolicy", "ApprovalRule", "EvalGateRequirement"]


class EvalGateRequirement(BaseModel):
    """An eval gate the change must pass (off while ``dataset`` is unset): the new version (a
    label move) or the candidate release (a rollout or deploy) has a completed eval run on
    ``dataset``; when what it replaces has one too, the two are compared with the
    ``evals.gate`` rules of bastion.yaml and must pass; and every metric of the new run passes
    at least ``min_pass_rate`` of the time when that is set."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        None, description="the dataset the eval runs must be on; unset: no eval gate"
    )
    min_pass_rate: float | None = Field(
        None, ge=0, le=1, description="every metric of the new run must pass at least this often"
    )

    @field_validator("dataset")
    @classmethod
    def _dataset_name(cls, value: str | None) -> str | None:
        return None if value is None else names.DATASET.check(value)


class ApprovalRule(BaseModel):
    """What one kind of change needs: a second person's approval, an eval gate, both, or
    (both unset, the default) neither."""

    model_config = ConfigDict(extra="forbid")

    approver_role: Literal["owner", "admin", "member"] | None = Field(
        None,
        description="the lowest project role of the second person who must approve (never "
        "the person who asked); unset: no approval needed",
    )
    eval_gate: EvalGateRequirement = Field(
        default_factory=EvalGateRequirement, description=EvalGateRequirement.__doc__
    )

    @property
    def active(self) -> bool:
        """Whether the rule asks for anything."""
        return self.approver_role is not None or self.eval_gate.dataset is not None


def _rule(what: str) -> Any:
    return Field(default_factory=ApprovalRule, description=what)


class ApprovalPolicy(BaseModel):
    """Which changes of the project need a second person's approval or a passing eval gate;
    a rule left unset needs neither."""

    model_config = ConfigDict(extra="forbid")

    protected_labels: list[str] = Field(
        default_factory=list,
        description="labels moved only with labels.move_protected (as is every label "
        "protected through the API), and under label_move",
    )
    label_move: ApprovalRule = _rule(
        "moving a protected label (a rollback is exempt: see the README)"
    )
    rollout_start: ApprovalRule = _rule("starting a rollout, and deploying a release at once")
    rollout_promote: ApprovalRule = _rule("promoting a rollout by hand, whatever its step")
    budget_change: ApprovalRule = _rule(
        "changing a budget; budgets are only set in bastion.yaml today, so this rule is a hook "
        "for an API that changes them"
    )
    guard_change: ApprovalRule = _rule(
        "changing a guard policy; none exists yet, so this rule is a hook for it"
    )
    expires_after_h: float = Field(
        72.0, gt=0, le=24 * 365, description="an approval not used within this long expires"
    )

    @field_validator("protected_labels")
    @classmethod
    def _label_names(cls, value: list[str]) -> list[str]:
        return [names.LABEL.check(label) for label in value]
