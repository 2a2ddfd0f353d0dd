"""Chat requests that name a registry prompt instead of carrying messages.

Two forms, on ``/v1/chat/completions`` and ``/v1/messages`` alike:

- a body field ``"prompt": {"name": "summarize", "label": "production", "variables": {...}}``
  (or ``"version": 3`` instead of a label; the label defaults to ``production``);
- headers, for clients that cannot add body fields: ``x-bastion-prompt: summarize``
  (``summarize@staging``, ``summarize:3``) and ``x-bastion-prompt-variables: {"ticket": "..."}``.

The prompt replaces ``messages`` (and, for Anthropic, ``system``): giving both is a 400 naming
the conflict. SDKs that insist on a ``messages`` argument may send an empty list, and an empty
or missing ``model`` means the version's own model. The version's ``params`` (and ``tools``,
``response_format``) are defaults; the request's own parameters override them. A ``text:``
prompt becomes one user message. The version comes from the gateway's in-memory
:class:`~bastion.gateway.prompts.PromptCache` and renders in the template sandbox, so the
request path does not touch the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from bastion.gateway.errors import Api, GatewayError
from bastion.gateway.prompts import PromptCache, PromptLookupError
from bastion.gateway.recording import Call
from bastion.prompts import TemplateError, render
from bastion.prompts.template import TemplateLimitError
from bastion.prompts.template_budget import DEFAULT_LIMITS, TemplateLimits
from bastion.providers.translate import TranslationError, openai_to_anthropic_request
from bastion.tracing.attributes import PROMPT_HASH, PROMPT_LABEL, PROMPT_VARIABLES

__all__ = ["PROMPT_HEADER", "VARIABLES_HEADER", "PromptRef", "apply_prompt", "prompt_reference"]

PROMPT_HEADER = "x-bastion-prompt"
VARIABLES_HEADER = "x-bastion-prompt-variables"
DEFAULT_LABEL = "production"
_REF_KEYS = frozenset({"name", "label", "version", "variables"})
# Anthropic parameters a prompt's params may carry that the OpenAI-shaped translation drops.
_ANTHROPIC_EXTRAS = ("top_k", "stop_sequences", "tool_choice", "metadata")


@dataclass(frozen=True, slots=True)
class PromptRef:
    """A request's reference to a prompt: name, label or version, and the variables."""

    name: str
    label: str | None = DEFAULT_LABEL
    version: int | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, error_class="invalid_request", param=param)


def _from_body(value: Any) -> PromptRef:
    if not isinstance(value, dict):
        raise _invalid('prompt must be an object: {"name": ..., "label"?, "variables"?}', "prompt")
    unknown = sorted(set(value) - _REF_KEYS)
    if unknown:
        raise _invalid(
            f"prompt.{unknown[0]} is not a known field (use name, label, version, variables)",
            f"prompt.{unknown[0]}",
        )
    name, label, version = value.get("name"), value.get("label"), value.get("version")
    if not isinstance(name, str) or not name:
        raise _invalid("prompt.name must be a non-empty string", "prompt.name")
    if label is not None and (not isinstance(label, str) or not label):
        raise _invalid("prompt.label must be a non-empty string", "prompt.label")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise _invalid("prompt.version must be an integer >= 1", "prompt.version")
    if label is not None and version is not None:
        raise _invalid("give prompt.label or prompt.version, not both", "prompt.version")
    variables = value.get("variables")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise _invalid("prompt.variables must be an object", "prompt.variables")
    if version is None and label is None:
        label = DEFAULT_LABEL
    return PromptRef(name, label, version, variables)


def _from_headers(reference: str, raw_variables: str | None) -> PromptRef:
    reference = reference.strip()
    label: str | None = DEFAULT_LABEL
    version: int | None = None
    if "@" in reference:
        reference, label = reference.split("@", 1)
    elif ":" in reference:
        reference, number = reference.split(":", 1)
        number = number.removeprefix("v")
        if not number.isdigit() or int(number) < 1:
            raise _invalid(
                f"{PROMPT_HEADER}: the version after ':' must be a number >= 1", PROMPT_HEADER
            )
        label, version = None, int(number)
    if not reference or label == "":
        raise _invalid(
            f"{PROMPT_HEADER} must be 'name', 'name@label' or 'name:version'", PROMPT_HEADER
        )
    variables: Any = {}
    if raw_variables is not None and raw_variables.strip():
        try:
            variables = orjson.loads(raw_variables)
        except orjson.JSONDecodeError as exc:
            message = f"{VARIABLES_HEADER} is not valid JSON: {exc}"
            raise _invalid(message, VARIABLES_HEADER) from exc
        if not isinstance(variables, dict):
            raise _invalid(f"{VARIABLES_HEADER} must be a JSON object", VARIABLES_HEADER)
    return PromptRef(reference, label, version, variables)


def prompt_reference(headers: Mapping[str, str], body: Mapping[str, Any]) -> PromptRef | None:
    """The prompt a request names (body field or headers), or ``None`` for a plain request."""
    header = headers.get(PROMPT_HEADER)
    variables = headers.get(VARIABLES_HEADER)
    in_body = body.get("prompt") is not None
    if in_body and (header is not None or variables is not None):
        raise _invalid(
            f"name the prompt in the body or in the {PROMPT_HEADER} header, not both", "prompt"
        )
    if in_body:
        return _from_body(body["prompt"])
    if header is not None:
        return _from_headers(header, variables)
    if variables is not None:
        raise _invalid(f"{VARIABLES_HEADER} needs a {PROMPT_HEADER} header", VARIABLES_HEADER)
    return None


def _check_conflicts(api: Api, body: Mapping[str, Any], ref: PromptRef) -> None:
    where = "body field 'prompt'" if body.get("prompt") is not None else f"{PROMPT_HEADER} header"
    if body.get("messages"):
        raise _invalid(
            f"give either messages or a prompt ({ref.name!r} in the {where}), not both: "
            "the prompt's rendered messages replace messages",
            "messages",
        )
    if api == "anthropic" and body.get("system"):
        raise _invalid(
            f"give either system or a prompt ({ref.name!r} in the {where}), not both: "
            "the prompt's system messages replace system",
            "system",
        )


async def apply_prompt(
    cache: PromptCache,
    project_id: int,
    api: Api,
    raw: Any,
    headers: Mapping[str, str],
    call: Call,
    *,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> Any:
    """``raw`` with its prompt reference replaced by the rendered request; unchanged otherwise.

    Fills the call's prompt fields as soon as they are known, so a rejection's span names them.
    The prompt renders under ``limits`` (its project's): a render past one is a 422 naming it.
    """
    if not isinstance(raw, dict):
        return raw
    ref = prompt_reference(headers, raw)
    if ref is None:
        return raw
    call.prompt_name = ref.name[:200]
    if ref.label is not None:
        call.attributes[PROMPT_LABEL] = ref.label
    _check_conflicts(api, raw, ref)
    try:
        cached = await cache.get(project_id, ref.name, label=ref.label, version=ref.version)
    except PromptLookupError as exc:
        kind = "prompt_not_found" if exc.status == 404 else "prompt_registry_unavailable"
        raise GatewayError(exc.status, exc.message, error_class=kind, param="prompt") from exc
    call.prompt_version = cached.version
    call.attributes[PROMPT_HASH] = cached.content_hash
    if ref.variables:
        # Kept so a dataset made from this trace can re-run the prompt (evals.from_traces).
        call.attributes[PROMPT_VARIABLES] = dict(ref.variables)
    spec = cached.spec
    try:
        # On the event loop: the CPU limit, read as the template runs, bounds how long.
        rendered = render(spec, ref.variables, cached.partials, limits=limits)
    except TemplateLimitError as exc:
        raise GatewayError(
            422,
            f"prompt {ref.name!r} version {cached.version}: {exc}",
            error_class="prompt_limit_exceeded",
            param="prompt",
            code=f"template_{exc.limit}_limit",
        ) from exc
    except TemplateError as exc:
        raise _invalid(
            f"prompt {ref.name!r} version {cached.version}: {exc}", "prompt.variables"
        ) from exc
    messages = [{"role": "user", "content": rendered}] if isinstance(rendered, str) else rendered
    own = {k: v for k, v in raw.items() if k not in ("prompt", "messages", "system")}
    model = own.pop("model", None) or spec.model
    if not isinstance(model, str) or not model:
        raise _invalid(
            f"prompt {ref.name!r} version {cached.version} names no model: give one in the request",
            "model",
        )
    defaults: dict[str, Any] = dict(spec.params)
    if spec.tools is not None:
        defaults["tools"] = [dict(t) for t in spec.tools]
    if spec.response_format is not None:
        defaults["response_format"] = dict(spec.response_format)
    if api == "openai":
        body = {**defaults, **own, "model": model, "messages": messages}
    else:
        try:
            shaped = openai_to_anthropic_request({**defaults, "messages": messages}, model)
        except TranslationError as exc:
            raise _invalid(
                f"prompt {ref.name!r} version {cached.version}: {exc}", "prompt"
            ) from exc
        shaped.pop("stream", None)
        extras = {k: defaults[k] for k in _ANTHROPIC_EXTRAS if k in defaults}
        body = {**shaped, **extras, **own, "model": model}
    call.request_body = body
    return body
