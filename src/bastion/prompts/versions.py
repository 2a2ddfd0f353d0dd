"""What the SDK hands an application: `PromptVersion`, and the errors `prompts.get` raises.

A `PromptVersion` is one resolved prompt (its spec and the specs of the partials it includes)
plus where it came from (`source`), so an application, and its traces, can tell a prompt served
by the registry from one served out of the last-known-good cache or a local fallback file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bastion.prompts.model import PromptSpec
from bastion.prompts.template import render
from bastion.tracing.attributes import PROMPT_HASH, PROMPT_NAME, PROMPT_SOURCE, PROMPT_VERSION

__all__ = [
    "SPAN_HASH",
    "SPAN_NAME",
    "SPAN_SOURCE",
    "SPAN_VERSION",
    "PromptAuthError",
    "PromptError",
    "PromptNotFound",
    "PromptSource",
    "PromptUnavailable",
    "PromptVersion",
]

PromptSource = Literal["server", "cache", "stale", "disk", "fallback"]
"""Where a `PromptVersion` came from.

- ``server``: fetched from the registry by this call.
- ``cache``: the in-memory copy, younger than the cache TTL (or a pinned version).
- ``stale``: the in-memory copy, older than the TTL; a background refresh is under way (or the
  last one failed: the server is unreachable).
- ``disk``: the registry could not be reached; this is the last copy fetched successfully,
  read from the on-disk cache.
- ``fallback``: the registry could not be reached and nothing was cached; this is the local
  fallback file (``version`` is None).
"""

SPAN_NAME = PROMPT_NAME
SPAN_VERSION = PROMPT_VERSION
SPAN_HASH = PROMPT_HASH
SPAN_SOURCE = PROMPT_SOURCE

_UNRESOLVED: Any = object()
_otel_trace: Any = _UNRESOLVED  # the opentelemetry.trace module, None when not installed


class PromptError(Exception):
    """`prompts.get` failed. ``status`` is the server's HTTP status, when there was one."""

    def __init__(self, message: str, *, name: str, status: int | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.status = status


class PromptNotFound(PromptError, LookupError):
    """The registry has no such prompt, version or label (HTTP 404). Never masked by fallbacks."""


class PromptAuthError(PromptError):
    """The API key is missing, invalid, revoked or lacks the ``read`` role (HTTP 401/403)."""


class PromptUnavailable(PromptError):
    """The registry could not be reached and there is no cached copy or fallback file."""


@dataclass(frozen=True, slots=True, eq=False)
class PromptVersion:
    """One resolved prompt version, ready to render.

    ``version`` and ``label`` are None for a local fallback file (it has no registry version)
    and ``label`` is None for a pinned ``version=``. ``partials`` holds the spec of every prompt
    it includes, at the version the registry pinned.
    """

    name: str
    version: int | None
    label: str | None
    content_hash: str
    spec: PromptSpec
    partials: Mapping[str, PromptSpec]
    source: PromptSource
    labels: tuple[str, ...] = field(default=())

    @property
    def model(self) -> str | None:
        """The model the prompt declares (``model:`` in the file), if any."""
        return self.spec.model

    @property
    def params(self) -> Mapping[str, Any]:
        """The model parameters the prompt declares (``params:``), e.g. temperature."""
        return self.spec.params

    def render(
        self, variables: Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> list[dict[str, Any]] | str:
        """Render with ``variables`` (a mapping, keyword arguments, or both): a new messages
        list for a ``messages:`` prompt, the text for a ``text:`` prompt.

        Raises `bastion.prompts.TemplateError` naming the variable on a missing, unexpected or
        mistyped variable. When OpenTelemetry is installed and a span is recording, that span
        gets `span_attributes()` first, so the trace says which version (and source) was used
        even when rendering fails.
        """
        values = {**variables, **kwargs} if variables else kwargs
        annotate_current_span(self)
        return render(self.spec, values, self.partials)

    def span_attributes(self) -> dict[str, str | int]:
        """``bastion.prompt.{name,version,hash,source}`` (no version for a fallback file).

        Bastion's trace ingest maps name and version to a span's ``prompt_name`` and
        ``prompt_version``; hash and source stay span attributes.
        """
        out: dict[str, str | int] = {SPAN_NAME: self.name}
        if self.version is not None:
            out[SPAN_VERSION] = self.version
        out[SPAN_HASH] = self.content_hash
        out[SPAN_SOURCE] = self.source
        return out

    def __repr__(self) -> str:
        return (
            f"PromptVersion(name={self.name!r}, version={self.version!r}, label={self.label!r}, "
            f"source={self.source!r}, content_hash={self.content_hash[:19]!r}...)"
        )


def annotate_current_span(prompt: PromptVersion) -> bool:
    """Set ``prompt``'s span attributes on the current OpenTelemetry span, if one is recording.

    Returns whether a span was annotated. OpenTelemetry is optional: without it this is a no-op.
    """
    global _otel_trace
    if _otel_trace is _UNRESOLVED:
        try:
            from opentelemetry import trace
        except ImportError:
            _otel_trace = None
        else:
            _otel_trace = trace
    if _otel_trace is None:
        return False
    span = _otel_trace.get_current_span()
    if not span.is_recording():
        return False
    span.set_attributes(prompt.span_attributes())
    return True
