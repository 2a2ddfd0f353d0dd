"""Building scorers from specs, through the ``bastion.scorers`` entry-point group.

Built-in scorers are registered exactly like third-party ones: a package declares

.. code-block:: toml

    [project.entry-points."bastion.scorers"]
    my-check = "my_package.scorers:make_my_check"

where ``make_my_check(spec, context) -> Scorer``. :func:`make_scorer` then adds what every
scorer shares: ``metric`` (the reported name), ``weight``, and negation by a ``not-`` prefix
(``not-contains``), which flips the value (``1 - value``) and the verdict, except that a score
flagged as an error (``details["error"]``) stays failed. A factory can refuse negation with a
``negatable = False`` attribute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.evals.scorers.base import Output, Score, Scorer, ScorerError, template_variables
from bastion.names import SCORER as SCORER_NAME
from bastion.plugins import PluginGroup
from bastion.settings import PluginSettings

if TYPE_CHECKING:
    from bastion.evals.datasets import Item
    from bastion.evals.scorers.judge_client import JudgeClient

__all__ = [
    "ENTRY_POINT_GROUP",
    "SCORERS",
    "ConfiguredScorer",
    "ScorerContext",
    "ScorerFactory",
    "make_scorer",
    "reload_scorers",
    "scorer_types",
]

ENTRY_POINT_GROUP = "bastion.scorers"
NEGATION = "not-"


@dataclass
class ScorerContext:
    """What scorers may need beyond their spec.

    Attributes:
        judge: the LLM judge client for model-graded scorers.
        embedder: texts → vectors, for ``similar``.
        tools: the tools declared to the model under test, for ``valid-tool-call``.
        plugins: the ``plugins`` settings, whose allowlist third-party scorers must pass
            (None: every installed scorer may be loaded).
    """

    judge: JudgeClient | None = None
    embedder: Callable[[list[str]], list[list[float]]] | None = None
    tools: Sequence[Mapping[str, Any]] = ()
    plugins: PluginSettings | None = None


ScorerFactory = Callable[[Mapping[str, Any], "ScorerContext | None"], Scorer]


SCORERS: PluginGroup[ScorerFactory] = PluginGroup(
    ENTRY_POINT_GROUP, "scorer type", error=ScorerError
)


def reload_scorers() -> None:
    """Forget the entry points read so far (after installing a plugin in a running process)."""
    SCORERS.reload()


def _negatable(factory: ScorerFactory) -> bool:
    return getattr(factory, "negatable", True) is not False


def scorer_types() -> list[str]:
    """Every scorer type :func:`make_scorer` accepts, ``not-`` forms included, sorted. (A
    plugin that fails to load is listed under its own name; using it reports the failure.)"""
    names = set(SCORERS.names())
    negated: set[str] = set()
    for name in names:
        if name.startswith(NEGATION):
            continue
        try:
            factory = _factory(name)
        except ScorerError:
            continue
        if _negatable(factory):
            negated.add(NEGATION + name)
    return sorted(names | negated)


def _factory(
    kind: str, shown: str | None = None, allow: PluginSettings | None = None
) -> ScorerFactory:
    factory = SCORERS.load(kind, allow=allow, shown=shown, known_hint="; each also as 'not-<type>'")
    if not callable(factory):
        raise ScorerError(f"scorer type {kind!r}: {factory!r} is not callable")
    return factory


@dataclass(frozen=True, slots=True)
class ConfiguredScorer:
    """A scorer as a spec configured it: reported ``name`` (the spec's ``metric``, else its
    type), ``weight``, negation, and the item variables its arguments refer to."""

    name: str
    type: str
    inner: Scorer = field(repr=False)
    weight: float = 1.0
    negate: bool = False
    variables: frozenset[str] = frozenset()
    spec: Mapping[str, Any] = field(default_factory=dict, repr=False)

    async def score(self, output: Output, item: Item) -> Score:
        result = await self.inner.score(output, item)
        if not isinstance(result, Score):
            raise ScorerError(f"scorer {self.type!r} returned {type(result).__name__}, not Score")
        if not self.negate:
            if result.metric == self.name:
                return result
            return Score(self.name, result.value, result.passed, result.reason, result.details)
        details = {**result.details, "negated": True}
        if result.details.get("error"):
            return Score(self.name, 0.0, False, result.reason, details)
        return Score(self.name, 1.0 - result.value, not result.passed, result.reason, details)


def make_scorer(spec: Mapping[str, Any], *, context: ScorerContext | None = None) -> Scorer:
    """A scorer for ``spec``, e.g. ``{"type": "contains", "value": "x"}`` or ``{"type":
    "regex", "value": "^\\\\d+$", "metric": "format", "weight": 2}``.

    Common keys: ``type`` (required; ``not-`` negates), ``metric`` (reported name, default the
    type), ``weight`` (positive number, default 1, for whoever aggregates). The rest belongs to
    the scorer type.

    Raises:
        ScorerError: unknown type (naming the known ones) or bad arguments.
    """
    if not isinstance(spec, Mapping):
        raise ScorerError(f"a scorer spec must be a mapping, got {type(spec).__name__}")
    kind = spec.get("type")
    if not isinstance(kind, str) or not kind.strip():
        raise ScorerError(f"a scorer spec needs a 'type' (known: {', '.join(scorer_types())})")
    kind = kind.strip()
    metric = spec.get("metric", kind)
    if not SCORER_NAME.is_valid(metric):
        raise ScorerError(f"{kind}: 'metric' must be {SCORER_NAME.rule}, got {metric!r}")
    weight = spec.get("weight", 1.0)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight < 0
    ):
        raise ScorerError(f"{kind}: 'weight' must be a non-negative number, got {weight!r}")
    base = kind
    negate = False
    if kind.startswith(NEGATION) and kind not in SCORERS:
        base = kind[len(NEGATION) :]
        negate = True
    factory = _factory(base, kind, context.plugins if context is not None else None)
    if negate and not _negatable(factory):
        raise ScorerError(f"scorer type {base!r} cannot be negated ({kind!r})")
    inner_spec = {**spec, "type": base}
    inner = factory(inner_spec, context)
    if not callable(getattr(inner, "score", None)):
        raise ScorerError(f"scorer type {base!r}: the factory returned {inner!r}, not a Scorer")
    return ConfiguredScorer(
        name=str(metric),
        type=kind,
        inner=inner,
        weight=float(weight),
        negate=negate,
        variables=template_variables({k: v for k, v in spec.items() if k != "type"}),
        spec=dict(spec),
    )
