"""Running promptfoo configs (``promptfooconfig.yaml``) with Bastion: ``bastion eval run -c``.

Modules: :mod:`.loading` (files), :mod:`.cases` (tests, CSV ``__expected``, defaultTest,
scenarios), :mod:`.config` (prompts, providers, the whole file), :mod:`.templating`
(Nunjucks templates in Bastion's sandbox), :mod:`.asserts` (assertions onto scorers, promptfoo's
aggregation), :mod:`.sandbox` (python/javascript assertions out of process), :mod:`.running`
(plan and run, stored as eval runs), :mod:`.command` (the CLI's entry).
"""

from bastion.evals.promptfoo.asserts import Assertion, TestGrade, Verdict, grade
from bastion.evals.promptfoo.cases import TestCase, assertion_from_string, expand_tests
from bastion.evals.promptfoo.command import PromptfooOptions, exit_code, run_config
from bastion.evals.promptfoo.config import Suite, is_promptfoo_config, load_suite
from bastion.evals.promptfoo.loading import PromptfooError

__all__ = [
    "Assertion",
    "PromptfooError",
    "PromptfooOptions",
    "Suite",
    "TestCase",
    "TestGrade",
    "Verdict",
    "assertion_from_string",
    "exit_code",
    "expand_tests",
    "grade",
    "is_promptfoo_config",
    "load_suite",
    "run_config",
]
