"""Red-team suites: built-in attack sets (prompt injection, system-prompt and PII
exfiltration, jailbreak) run against a target through the eval runner, scored by leak and
refusal scorers, reported apart from quality and gated with zero tolerance by default."""

from bastion.evals.redteam.run import (
    CategoryResult,
    RedteamConfigError,
    RedteamReport,
    SuccessLimits,
    judge,
    prepare,
)
from bastion.evals.redteam.suites import (
    CANARY,
    CATEGORY_RULES,
    REDTEAM_SCORERS,
    SUITES,
    SYSTEM_PROMPT,
    Attack,
    load_suites,
    parse_suites,
)

__all__ = [
    "CANARY",
    "CATEGORY_RULES",
    "REDTEAM_SCORERS",
    "SUITES",
    "SYSTEM_PROMPT",
    "Attack",
    "CategoryResult",
    "RedteamConfigError",
    "RedteamReport",
    "SuccessLimits",
    "judge",
    "load_suites",
    "parse_suites",
    "prepare",
]
