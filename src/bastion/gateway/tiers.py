"""Tiered routing: a classifier sends simple requests to a cheaper alias, hard ones to the
flagship.

```yaml
models:
  chat:
    tiers: {simple: chat-cheap, complex: chat-flagship}   # tier name → alias with deployments
    classifier:
      name: rules                  # an entry point of the ``bastion.classifiers`` group
      max_simple_tokens: 500       # estimated prompt tokens (≈ 4 characters each)
      max_simple_messages: 20      # more messages than this → complex (null: no limit)
      tools_are_complex: true      # a request declaring tools → complex
      complex_keywords: [prove, step by step, refactor]   # whole words, any case
      complex_patterns: ['\\bdef \\w+\\(']                # regular expressions, any case
    default_tier: complex          # when a classifier answers a tier the alias lacks
```

Classifiers are found like scorers (through :mod:`bastion.plugins`, so the ``plugins.allow``
setting applies): a package declares

```toml
[project.entry-points."bastion.classifiers"]
my-classifier = "my_package.routing:make_classifier"
```

where ``make_classifier(options) -> Classifier`` receives the ``classifier:`` mapping without
``name`` and returns an object with ``classify(body, api) -> Decision``. The built-in ``rules``
classifier is registered the same way. The decision (``bastion.routing.tier``), its reason
(``bastion.routing.reason``), the tiered alias asked for (``bastion.routing.alias``) and the alias
routed to (``bastion.routing.target``) are on the span; the client's ``model`` stays the alias
it asked for in the span's request model, and the response's ``model`` is what the serving
deployment reports, as for any alias.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from bastion.gateway.recording import Call
from bastion.plugins import PluginGroup
from bastion.providers.config import GatewayConfig, ModelAlias
from bastion.settings import ConfigError, PluginSettings, Settings
from bastion.tracing.attributes import ROUTING_ALIAS, ROUTING_REASON, ROUTING_TARGET, ROUTING_TIER

__all__ = [
    "CLASSIFIERS",
    "ENTRY_POINT_GROUP",
    "Classifier",
    "ClassifierError",
    "ClassifierFactory",
    "Decision",
    "RulesClassifier",
    "TierRouter",
    "classifier_names",
    "make_classifier",
    "register_classifier",
    "rules_classifier",
]

ENTRY_POINT_GROUP = "bastion.classifiers"


class ClassifierError(ValueError):
    """A classifier could not be found or configured."""


class Decision(NamedTuple):
    """A classifier's verdict: the tier's name and a short human-readable reason."""

    tier: str
    reason: str


class Classifier(Protocol):
    """Decides a request's tier from its (validated) body in the client's API format."""

    def classify(self, body: Mapping[str, Any], api: str) -> Decision: ...


ClassifierFactory = Callable[[Mapping[str, Any]], Classifier]

CLASSIFIERS: PluginGroup[ClassifierFactory] = PluginGroup(
    ENTRY_POINT_GROUP, "classifier", error=ClassifierError
)


def register_classifier(name: str, factory: ClassifierFactory) -> None:
    """Register ``factory`` under ``name`` in this process (an entry point does it for a
    package; this is for applications embedding the gateway, and tests)."""
    CLASSIFIERS.register(name, factory)


def classifier_names() -> list[str]:
    """Every classifier name known: entry points and registrations."""
    return CLASSIFIERS.names()


def make_classifier(
    name: str, options: Mapping[str, Any], *, allow: PluginSettings | None = None
) -> Classifier:
    """The classifier ``name`` configured with ``options``; :class:`ClassifierError` when the
    name is unknown, ambiguous or refused by ``allow``, the factory fails, or it returns no
    ``classify``."""
    factory = CLASSIFIERS.load(name, allow=allow)
    try:
        classifier = factory(options)
    except (ClassifierError, ValueError, TypeError) as exc:
        raise ClassifierError(f"classifier {name!r}: {exc}") from exc
    if not callable(getattr(classifier, "classify", None)):
        raise ClassifierError(f"classifier {name!r}: the factory returned no classify()")
    return classifier


def _texts(body: Mapping[str, Any]) -> list[str]:
    """Every piece of text in the prompt (system, messages, text parts)."""
    out: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        out.append(system)
    elif isinstance(system, list):
        out.extend(b.get("text", "") for b in system if isinstance(b, dict))
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    out.append(part["text"])
    return out


_RULE_OPTIONS = frozenset(
    {
        "max_simple_tokens",
        "max_simple_messages",
        "tools_are_complex",
        "complex_keywords",
        "complex_patterns",
    }
)


class RulesClassifier:
    """``complex`` when any rule fires (first one wins, as the reason), else ``simple``:
    tools declared, estimated prompt tokens above ``max_simple_tokens``, more messages than
    ``max_simple_messages``, a keyword (whole word, any case) or a pattern found."""

    def __init__(
        self,
        *,
        max_simple_tokens: int = 500,
        max_simple_messages: int | None = None,
        tools_are_complex: bool = True,
        complex_keywords: tuple[str, ...] = (),
        complex_patterns: tuple[str, ...] = (),
    ) -> None:
        self.max_simple_tokens = max_simple_tokens
        self.max_simple_messages = max_simple_messages
        self.tools_are_complex = tools_are_complex
        words = [re.escape(k.strip()) for k in complex_keywords if k.strip()]
        self._keywords = (
            re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE) if words else None
        )
        self._patterns = [(p, re.compile(p, re.IGNORECASE)) for p in complex_patterns]

    def classify(self, body: Mapping[str, Any], api: str) -> Decision:
        """See the class docstring."""
        if self.tools_are_complex and body.get("tools"):
            return Decision("complex", "tools declared")
        messages = body.get("messages") or []
        if self.max_simple_messages is not None and len(messages) > self.max_simple_messages:
            return Decision("complex", f"{len(messages)} messages > {self.max_simple_messages}")
        texts = _texts(body)
        tokens = (sum(len(t) for t in texts) + 3) // 4
        if tokens > self.max_simple_tokens:
            return Decision("complex", f"~{tokens} tokens > {self.max_simple_tokens}")
        text = "\n".join(texts)
        if self._keywords is not None:
            match = self._keywords.search(text)
            if match:
                return Decision("complex", f"keyword {match.group(1).lower()!r}")
        for source, pattern in self._patterns:
            if pattern.search(text):
                return Decision("complex", f"pattern {source!r}")
        return Decision("simple", f"~{tokens} tokens, no complexity rule matched")


def rules_classifier(options: Mapping[str, Any]) -> RulesClassifier:
    """The built-in ``rules`` classifier's factory (see :class:`RulesClassifier`)."""
    unknown = sorted(set(options) - _RULE_OPTIONS)
    if unknown:
        raise ClassifierError(
            f"unknown option {unknown[0]!r} (known: {', '.join(sorted(_RULE_OPTIONS))})"
        )
    max_tokens = options.get("max_simple_tokens", 500)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise ClassifierError("max_simple_tokens must be a non-negative integer")
    max_messages = options.get("max_simple_messages")
    if max_messages is not None and (
        isinstance(max_messages, bool) or not isinstance(max_messages, int) or max_messages < 1
    ):
        raise ClassifierError("max_simple_messages must be a positive integer or null")
    tools = options.get("tools_are_complex", True)
    if not isinstance(tools, bool):
        raise ClassifierError("tools_are_complex must be true or false")
    keywords = options.get("complex_keywords", [])
    patterns = options.get("complex_patterns", [])
    for key, value in (("complex_keywords", keywords), ("complex_patterns", patterns)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ClassifierError(f"{key} must be a list of strings")
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ClassifierError(
                f"complex_patterns: {pattern!r} is not a valid regex: {exc}"
            ) from exc
    return RulesClassifier(
        max_simple_tokens=max_tokens,
        max_simple_messages=max_messages,
        tools_are_complex=tools,
        complex_keywords=tuple(keywords),
        complex_patterns=tuple(patterns),
    )


class TierRouter:
    """Resolves tiered aliases to the alias of the tier their classifier chooses."""

    def __init__(self, config: GatewayConfig, classifiers: Mapping[str, Classifier]) -> None:
        self.config = config
        self.classifiers = dict(classifiers)

    @classmethod
    def from_config(cls, config: GatewayConfig, settings: Settings) -> TierRouter:
        """Build every tiered alias's classifier; :class:`ConfigError` names key and line."""
        classifiers: dict[str, Classifier] = {}
        for alias in config.aliases.values():
            if not alias.tiers:
                continue
            spec = dict(alias.classifier)
            name = spec.pop("name", "rules")
            key = f"models.{alias.name}.classifier"
            if not isinstance(name, str) or not name:
                raise ConfigError(f"{settings.where(key)}{key}.name: must be a non-empty string")
            try:
                classifiers[alias.name] = make_classifier(name, spec, allow=settings.plugins)
            except ClassifierError as exc:
                raise ConfigError(f"{settings.where(key)}{key}: {exc}") from exc
        return cls(config, classifiers)

    def route(self, alias: ModelAlias, call: Call, api: str, body: Mapping[str, Any]) -> ModelAlias:
        """``alias`` itself, or for a tiered alias the alias of the chosen tier (recorded on
        the call). A classifier that raises routes to the default tier, saying why."""
        classifier = self.classifiers.get(alias.name)
        if classifier is None:
            return alias
        try:
            tier, reason = classifier.classify(body, api)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not fail the request
            tier, reason = alias.default_tier, f"classifier failed ({type(exc).__name__})"
        target_name = alias.tiers.get(tier)
        if target_name is None:
            reason = f"unknown tier {tier!r} from classifier; default tier ({reason})"
            tier = alias.default_tier
            target_name = alias.tiers[tier]
        target = self.config.aliases[target_name]
        attributes = call.attributes
        attributes[ROUTING_ALIAS] = alias.name
        attributes[ROUTING_TIER] = tier
        attributes[ROUTING_REASON] = reason
        attributes[ROUTING_TARGET] = target.name
        return target
