"""Prompts as code: the prompt file format, its data model and safe template rendering.

A prompt lives in git as `<name>.prompt.yaml` (or `<name>.prompt.md`: YAML front matter plus a
body that becomes `text`). `load_prompt_file`/`load_prompt_dir` turn files into `PromptSpec`s,
validated down to the file line; `PromptSpec.content_hash()` is the content address the registry
stores versions under; `render` fills a spec's templates inside a locked-down Jinja2 sandbox.

    spec = load_prompt_file(Path("prompts/summarize.prompt.yaml"))
    messages = render(spec, {"ticket": "The app crashes on upload."})

These modules are pure Python (no database, no network); `bastion.prompts.registry` builds the
versioned registry on top of them, and `bastion.prompts.client` fetches from it in applications
(`bastion.Client().prompts.get(name)` returns a `PromptVersion`).
"""

from bastion.prompts.client import PromptClient
from bastion.prompts.files import (
    PromptDirError,
    PromptFileError,
    dump_prompt_file,
    load_prompt_dir,
    load_prompt_file,
)
from bastion.prompts.model import (
    NAME_PATTERN,
    PromptSpec,
    PromptSpecError,
    Variable,
    VariableType,
)
from bastion.prompts.template import TemplateError, TemplateLimitError, check_spec, render
from bastion.prompts.template_budget import TemplateLimits
from bastion.prompts.versions import (
    PromptAuthError,
    PromptError,
    PromptNotFound,
    PromptSource,
    PromptUnavailable,
    PromptVersion,
)

__all__ = [
    "NAME_PATTERN",
    "PromptAuthError",
    "PromptClient",
    "PromptDirError",
    "PromptError",
    "PromptFileError",
    "PromptNotFound",
    "PromptSource",
    "PromptSpec",
    "PromptSpecError",
    "PromptUnavailable",
    "PromptVersion",
    "TemplateError",
    "TemplateLimitError",
    "TemplateLimits",
    "Variable",
    "VariableType",
    "check_spec",
    "dump_prompt_file",
    "load_prompt_dir",
    "load_prompt_file",
    "render",
]
