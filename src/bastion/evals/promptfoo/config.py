"""A promptfoo config file read into a :class:`Suite`: prompts, providers mapped to gateway
models, the expanded tests, and Bastion's own options from an optional ``bastion:`` block.

Which keys do what (anything else is an error naming it):

* run: ``prompts``, ``providers`` (or ``targets``), ``tests``, ``defaultTest``, ``scenarios``,
  ``description``, ``evaluateOptions.maxConcurrency``, ``bastion``;
* ignored with a warning (they change nothing about what is evaluated): ``sharing``,
  ``outputPath``, ``writeLatestResults``, ``tags``, ``metadata``, ``env``, ``$schema``,
  ``tracing``, ``evaluateOptions`` keys about display, caching and pacing;
* refused: ``extensions``, ``nunjucksFilters``, ``derivedMetrics``, ``redteam``,
  ``commandLineOptions`` and any other key.

Provider ids become gateway model aliases: ``--provider-map ID=ALIAS`` first, then
``bastion.providers`` in the file, then the built-in rules (``openai:chat:NAME``,
``openai:NAME``, ``anthropic:messages:NAME``, ``anthropic:NAME``, ``bastion:NAME`` → ``NAME``;
``echo`` answers with the rendered prompt without a call).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bastion import names
from bastion.evals.promptfoo.cases import TestCase, expand_tests
from bastion.evals.promptfoo.loading import (
    Problems,
    PromptfooError,
    expand_paths,
    is_file_ref,
    jsonable,
    load_yaml,
    read_data_file,
    read_text,
)
from bastion.evals.promptfoo.templating import check_filters
from bastion.parsing import InputError, InputLimits, ValueBudget

__all__ = [
    "Prompt",
    "Provider",
    "Suite",
    "is_promptfoo_config",
    "load_suite",
    "map_provider_id",
]

TOP_KEYS = frozenset(
    {"prompts", "providers", "targets", "tests", "defaultTest", "scenarios", "description",
     "evaluateOptions", "bastion"}
)  # fmt: skip
TOP_HARMLESS = frozenset(
    {"sharing", "outputPath", "writeLatestResults", "tags", "metadata", "env", "$schema",
     "tracing"}
)  # fmt: skip
EVALUATE_KEYS = frozenset({"maxConcurrency"})
EVALUATE_HARMLESS = frozenset(
    {
        "showProgressBar",
        "cache",
        "delay",
        "timeoutMs",
        "interactiveProviders",
        "generateSuggestions",
    }
)
BASTION_KEYS = frozenset({"providers", "judge", "dataset", "assertion_timeout_s", "workers"})
PROVIDER_KEYS = frozenset({"id", "label", "config"})
PROVIDER_HARMLESS = frozenset({"delay", "env"})
# Provider `config` keys sent to the gateway as request parameters.
PARAM_KEYS = frozenset(
    {"temperature", "max_tokens", "max_completion_tokens", "top_p", "top_k", "stop", "seed",
     "presence_penalty", "frequency_penalty", "response_format", "tools", "tool_choice",
     "reasoning_effort", "parallel_tool_calls", "user"}
)  # fmt: skip
# Keys about reaching a provider directly; the gateway holds keys and endpoints instead.
PARAM_HARMLESS = frozenset(
    {"apiKey", "apiKeyEnvar", "apiHost", "apiBaseUrl", "organization", "cost", "headers",
     "maxRetries", "timeout"}
)  # fmt: skip
PROMPT_KEYS = frozenset({"id", "raw", "label"})
_SEPARATOR = re.compile(r"^---\s*$", re.MULTILINE)
_GATEWAY_PREFIXES = {
    "openai": ("chat", "responses"),
    "anthropic": ("messages",),
    "azure": ("chat",),
    "azureopenai": ("chat",),
    "bastion": (),
}


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt: a text template or a list of chat messages with templated contents."""

    label: str
    text: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None

    @property
    def source(self) -> Any:
        return self.text if self.text is not None else [dict(m) for m in self.messages or ()]


@dataclass(frozen=True, slots=True)
class Provider:
    """A promptfoo provider as Bastion runs it: a gateway model alias, or ``echo``."""

    id: str
    label: str
    kind: Literal["gateway", "echo"]
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Suite:
    """Everything a promptfoo config asks to run, checked."""

    path: Path
    description: str | None
    prompts: tuple[Prompt, ...]
    providers: tuple[Provider, ...]
    tests: tuple[TestCase, ...]
    dataset: str
    judge: str | None  # default grading model alias
    provider_map: Mapping[str, str]
    assertion_timeout_s: float
    workers: int
    max_concurrency: int | None
    warnings: tuple[str, ...] = ()


def is_promptfoo_config(path: Path) -> bool:
    """Whether ``path`` is a promptfoo config rather than a ``bastion.yaml``: it sets
    ``tests``, ``defaultTest``, ``scenarios`` or ``targets``, or a list/string ``prompts``
    or a list ``providers`` (a ``bastion.yaml`` has mappings there)."""
    try:
        data = load_yaml(read_text(path))
    except (PromptfooError, InputError):
        return False
    if not isinstance(data, Mapping):
        return False
    if any(k in data for k in ("tests", "defaultTest", "scenarios", "targets")):
        return True
    return isinstance(data.get("prompts"), list | str) or isinstance(data.get("providers"), list)


# -- providers --------------------------------------------------------------------------------


def map_provider_id(
    provider_id: str,
    mapping: Mapping[str, str],
    problems: Problems,
    where: str,
    *,
    embedding: bool = False,
) -> str | None:
    """The gateway alias for a promptfoo provider id (see the module doc), or None after
    reporting why there is none. ``embedding`` also accepts ``openai:embedding:NAME``."""
    if provider_id in mapping:
        return mapping[provider_id]
    kind, _, rest = provider_id.partition(":")
    if kind in _GATEWAY_PREFIXES and rest:
        parts = rest.split(":", 1)
        apis = _GATEWAY_PREFIXES[kind] + (("embedding", "embeddings") if embedding else ())
        if len(parts) == 2 and parts[0] in apis:
            return parts[1] or None
        if len(parts) == 2 and kind != "bastion":
            problems.error(
                f"{where}: provider {provider_id!r}: the {kind} API {parts[0]!r} is not "
                "supported (map the id with --provider-map ID=ALIAS or bastion.providers)"
            )
            return None
        return rest
    problems.error(
        f"{where}: unknown provider type {kind!r} in {provider_id!r}: map it to a gateway "
        "model with --provider-map ID=ALIAS or a 'bastion: {providers: {ID: ALIAS}}' block"
    )
    return None


def _provider(
    entry: Any, where: str, mapping: Mapping[str, str], problems: Problems, base: Path
) -> Provider | None:
    config: Mapping[str, Any] = {}
    label: str | None = None
    provider_id: Any
    if isinstance(entry, str):
        provider_id = entry
    elif isinstance(entry, Mapping) and "id" not in entry and len(entry) == 1:
        provider_id, body = next(iter(entry.items()))
        if not isinstance(body, Mapping):
            problems.error(f"{where}: provider {provider_id!r} must map to a mapping")
            return None
        problems.unknown_keys(where, body, PROVIDER_KEYS, PROVIDER_HARMLESS)
        config = body.get("config") or {}
        label = body.get("label")
    elif isinstance(entry, Mapping):
        problems.unknown_keys(where, entry, PROVIDER_KEYS, PROVIDER_HARMLESS)
        provider_id = entry.get("id")
        config = entry.get("config") or {}
        label = entry.get("label")
    else:
        problems.error(f"{where}: a provider must be an id or a mapping, got {entry!r}")
        return None
    if not isinstance(provider_id, str) or not provider_id.strip():
        problems.error(f"{where}: a provider needs an 'id'")
        return None
    custom = is_file_ref(provider_id) or provider_id.startswith(("exec:", "python:", "http"))
    if custom and provider_id not in mapping:
        problems.error(
            f"{where}: custom provider {provider_id!r} is not supported (map it to a "
            "gateway model with --provider-map or bastion.providers)"
        )
        return None
    if not isinstance(config, Mapping):
        problems.error(f"{where}.config: must be a mapping")
        return None
    problems.unknown_keys(f"{where}.config", config, PARAM_KEYS, PARAM_HARMLESS)
    params = {k: jsonable(v) for k, v in config.items() if k in PARAM_KEYS}
    for name in ("tools", "response_format"):
        if is_file_ref(params.get(name)):
            try:
                params[name] = read_data_file(expand_paths(params[name], base)[0])
            except PromptfooError as exc:
                problems.error(f"{where}.config.{name}: {exc}")
                return None
    shown = str(label) if label else provider_id
    if provider_id == "echo" and provider_id not in mapping:
        return Provider(provider_id, shown, "echo")
    model = map_provider_id(provider_id, mapping, problems, where)
    if model is None:
        return None
    return Provider(provider_id, shown, "gateway", model, params)


# -- prompts ----------------------------------------------------------------------------------


def _messages(value: Any) -> tuple[Mapping[str, Any], ...] | None:
    """``value`` as chat messages when it is a list of ``{role, content}`` mappings."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in value):
        return None
    return tuple(dict(m) for m in value)


def _inline_prompt(text: str, label: str) -> Prompt:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            messages = _messages(ValueBudget(InputLimits()).loads(stripped))
        except InputError:
            messages = None
        if messages is not None:
            return Prompt(label, messages=messages)
    return Prompt(label, text=text)


def _file_prompts(reference: str, base: Path, label: str | None) -> list[Prompt]:
    out: list[Prompt] = []
    for path in expand_paths(reference, base):
        suffix = path.suffix.lower()
        shown = label or f"{path.name}"
        if suffix in {".py", ".js", ".cjs", ".mjs", ".ts"}:
            raise PromptfooError(f"{reference}: prompt functions ({suffix}) are not supported")
        if suffix in {".json", ".yaml", ".yml"}:
            data = read_data_file(path)
            messages = _messages(data)
            if messages is None:
                raise PromptfooError(
                    f"{path}: expected a list of chat messages ({{role, content}})"
                )
            out.append(Prompt(shown, messages=messages))
            continue
        if suffix == ".jsonl":
            for number, line in enumerate(read_text(path).splitlines(), start=1):
                if line.strip():
                    messages = _messages(ValueBudget(InputLimits()).loads(line, line=number))
                    if messages is None:
                        raise PromptfooError(f"{path}:{number}: expected a list of chat messages")
                    out.append(Prompt(f"{shown}:{number}", messages=messages))
            continue
        parts = [p.strip("\n") for p in _SEPARATOR.split(read_text(path))]
        parts = [p for p in parts if p.strip()]
        for index, part in enumerate(parts):
            out.append(_inline_prompt(part, shown if len(parts) == 1 else f"{shown}:{index + 1}"))
    return out


def _prompts(value: Any, base: Path, problems: Problems) -> list[Prompt]:
    entries = value if isinstance(value, list) else [value]
    prompts: list[Prompt] = []
    for index, entry in enumerate(entries):
        where = f"prompts[{index}]"
        label: str | None = None
        if isinstance(entry, Mapping):
            problems.unknown_keys(where, entry, PROMPT_KEYS)
            label = entry.get("label")
            if "raw" in entry:
                raw = entry["raw"]
                if not isinstance(raw, str):
                    problems.error(f"{where}.raw: must be a string")
                    continue
                prompts.append(_inline_prompt(raw, str(label or raw[:40])))
                continue
            entry = entry.get("id")
        if not isinstance(entry, str) or not entry.strip():
            problems.error(
                f"{where}: a prompt must be a string, a file:// reference or {{id|raw, label}}"
            )
            continue
        if is_file_ref(entry):
            try:
                prompts.extend(_file_prompts(entry, base, label))
            except (PromptfooError, InputError) as exc:
                problems.error(f"{where}: {exc}")
            continue
        prompts.append(_inline_prompt(entry, str(label or _short_label(entry))))
    return prompts


def _short_label(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= 40 else flat[:39] + "…"


# -- the whole file ---------------------------------------------------------------------------


def _bastion_block(value: Any, problems: Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.error("bastion: must be a mapping")
        return {}
    problems.unknown_keys("bastion", value, BASTION_KEYS)
    out = dict(value)
    providers = out.get("providers", {})
    if not isinstance(providers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in providers.items()
    ):
        problems.error("bastion.providers: must map promptfoo provider ids to gateway aliases")
        out["providers"] = {}
    timeout = out.get("assertion_timeout_s", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        problems.error("bastion.assertion_timeout_s: must be a number of seconds in (0, 600]")
    workers = out.get("workers", 2)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 32:
        problems.error("bastion.workers: must be an integer from 1 to 32")
    return out


def _default_dataset(folder: str, stem: str) -> str:
    """``promptfoo.<folder>.<stem>``, made a valid dataset name (``bastion.names``): a run of
    other characters becomes one ``-``."""
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{folder}.{stem}").strip(".-_")
    return f"promptfoo.{tail}"[: names.DATASET.max_length]


def _max_concurrency(evaluate: Any, problems: Problems) -> int | None:
    """``evaluateOptions.maxConcurrency``, checked; None when absent or wrong."""
    if not isinstance(evaluate, Mapping):
        problems.error("evaluateOptions: must be a mapping")
        return None
    problems.unknown_keys("evaluateOptions", evaluate, EVALUATE_KEYS, EVALUATE_HARMLESS)
    raw = evaluate.get("maxConcurrency")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        problems.error("evaluateOptions.maxConcurrency: must be a positive integer")
        return None
    return raw


def _checked_prompts(data: Mapping[str, Any], base: Path, problems: Problems) -> list[Prompt]:
    """The config's prompts, each template checked for filters the renderer lacks."""
    if "prompts" not in data:
        problems.error("config: 'prompts' is required")
    prompts = _prompts(data.get("prompts"), base, problems) if "prompts" in data else []
    for index, prompt in enumerate(prompts):
        for message in check_filters(prompt.source):
            problems.error(f"prompt {index + 1} ({prompt.label!r}): {message}")
    return prompts


def _checked_providers(
    data: Mapping[str, Any], mapping: Mapping[str, str], problems: Problems, base: Path
) -> list[Provider]:
    """The config's ``providers`` (or ``targets``), mapped to gateway models, labels distinct."""
    if "providers" in data and "targets" in data:
        problems.error("config: give 'providers' or 'targets', not both")
    raw_providers = data.get("providers", data.get("targets"))
    providers: list[Provider] = []
    if raw_providers is None:
        problems.error("config: 'providers' is required")
        return providers
    entries = raw_providers if isinstance(raw_providers, list) else [raw_providers]
    for index, entry in enumerate(entries):
        provider = _provider(entry, f"providers[{index}]", mapping, problems, base)
        if provider is not None:
            providers.append(provider)
    labels = [p.label for p in providers]
    for dupe in sorted({lbl for lbl in labels if labels.count(lbl) > 1}):
        problems.error(f"providers: {dupe!r} appears twice: give each a distinct 'label'")
    return providers


def load_suite(path: Path, *, provider_map: Mapping[str, str] | None = None) -> Suite:
    """Read and check a promptfoo config; every problem found is reported at once.

    Raises:
        PromptfooError: naming each unsupported key, missing file, unknown provider or
            assertion type, unsupported template filter...
    """
    problems = Problems()
    try:
        data = load_yaml(read_text(path))
    except InputError as exc:
        raise PromptfooError(f"{path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise PromptfooError(f"{path}: a promptfoo config must be a mapping")
    data = jsonable(data)
    base = path.resolve().parent
    problems.unknown_keys("config", data, TOP_KEYS, TOP_HARMLESS)
    block = _bastion_block(data.get("bastion"), problems)
    mapping = {**block.get("providers", {}), **dict(provider_map or {})}

    max_concurrency = _max_concurrency(data.get("evaluateOptions") or {}, problems)
    prompts = _checked_prompts(data, base, problems)
    providers = _checked_providers(data, mapping, problems, base)
    tests = expand_tests(data, base, problems)
    if not tests and not problems.errors:
        problems.error("config: no tests (give 'tests' or 'scenarios')")

    judge = block.get("judge")
    if judge is not None:
        judge = (
            map_provider_id(str(judge), mapping, problems, "bastion.judge")
            if ":" in str(judge)
            else str(judge)
        )
    problems.raise_errors()
    dataset = block.get("dataset") or _default_dataset(base.name, path.stem)
    return Suite(
        path=path,
        description=str(data["description"]) if data.get("description") else None,
        prompts=tuple(prompts),
        providers=tuple(providers),
        tests=tuple(tests),
        dataset=str(dataset),
        judge=judge,
        provider_map=mapping,
        assertion_timeout_s=float(block.get("assertion_timeout_s", 10.0)),
        workers=int(block.get("workers", 2)),
        max_concurrency=max_concurrency,
        warnings=tuple(problems.warnings),
    )


def parse_provider_map(pairs: Sequence[str]) -> dict[str, str]:
    """``--provider-map ID=ALIAS`` options as a mapping (the last ``=`` splits, so ids with
    ``=`` are not supported; aliases never contain one)."""
    out: dict[str, str] = {}
    for pair in pairs:
        provider_id, sep, alias = pair.rpartition("=")
        if not sep or not provider_id.strip() or not alias.strip():
            raise PromptfooError(f"--provider-map {pair!r}: use ID=ALIAS")
        out[provider_id.strip()] = alias.strip()
    return out
