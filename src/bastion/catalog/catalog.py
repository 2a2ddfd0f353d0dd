"""Model prices, context windows and deprecation dates; the cost of a span.

The shipped ``data/model_prices.csv`` seeds the catalog; ``prices:`` in ``bastion.yaml``
overrides it for every project and ``projects.<slug>.prices`` for one project. Prices are USD
per million tokens. A model the catalog cannot price keeps ``cost_usd = None`` and is counted and
logged: an unknown cost is never reported as zero.
"""

from __future__ import annotations

import csv
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from importlib.resources import files
from io import StringIO
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from bastion.settings import PriceOverride
from bastion.tracing.model import Span

__all__ = ["Catalog", "ModelInfo"]

log = logging.getLogger("bastion.catalog")

_PRICE_FIELDS = (
    "input_usd_per_mtok",
    "output_usd_per_mtok",
    "cache_read_usd_per_mtok",
    "cache_write_usd_per_mtok",
)
# Bedrock: optional cross-region prefix, vendor prefix, ``-v1:0`` style version suffix.
_BEDROCK = re.compile(
    r"^(?:(?:us|eu|apac|global|us-gov)\.)?"
    r"(?:anthropic|meta|amazon|mistral|cohere|ai21|deepseek|openai|qwen|writer)\.(.+?)"
    r"(?:-v\d+(?::\d+)?|:\d+)?$"
)
_VERTEX_DATE = re.compile(r"@\d{8}$|@latest$|@\d{3}$")
_DATE_SUFFIX = re.compile(r"-(?:20\d{6}|20\d{2}-\d{2}-\d{2})$")
_SHORT_DATE_SUFFIX = re.compile(r"-(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model's prices (USD per million tokens), limits and deprecation date."""

    name: str
    provider: str | None = None
    mode: str | None = None
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    cache_read_usd_per_mtok: float | None = None
    cache_write_usd_per_mtok: float | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    deprecation_date: date | None = None

    def cost(
        self,
        input_tokens: int | None,
        output_tokens: int | None,
        cached_tokens: int | None = None,
        cache_write_tokens: int | None = None,
    ) -> float | None:
        """USD for one call, or None when a price the call needs is unknown.

        ``input_tokens`` includes cache reads and cache writes (the OpenTelemetry GenAI
        convention); those are billed at their own rates when the model has them.
        """
        if input_tokens is None and output_tokens is None:
            return None
        cached = cached_tokens or 0
        written = cache_write_tokens or 0
        uncached = max(0, (input_tokens or 0) - cached - written)
        parts = (
            (uncached, self.input_usd_per_mtok),
            (cached, _first(self.cache_read_usd_per_mtok, self.input_usd_per_mtok)),
            (written, _first(self.cache_write_usd_per_mtok, self.input_usd_per_mtok)),
            (output_tokens or 0, self.output_usd_per_mtok),
        )
        total = 0.0
        for tokens, price in parts:
            if tokens:
                if price is None:
                    return None
                total += tokens * price
        return total / 1e6

    def is_deprecated(self, on: date) -> bool:
        return self.deprecation_date is not None and self.deprecation_date <= on


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


class Catalog:
    """Model lookup by name (tolerant of provider prefixes, snapshots and Bedrock ids)."""

    def __init__(
        self,
        models: Mapping[str, ModelInfo],
        *,
        project_models: Mapping[int, Mapping[str, ModelInfo]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._models = dict(models)
        self._project_models = {pid: dict(m) for pid, m in (project_models or {}).items()}
        self._resolved: dict[tuple[int | None, str], ModelInfo | None] = {}
        self._lock = threading.Lock()
        self.unknown_models: dict[str, int] = {}
        self._unpriced: Counter | None = None
        if registry is not None:
            self._unpriced = Counter(
                "bastion_catalog_unpriced_spans",
                "LLM spans whose cost is unknown because the catalog has no price for the model",
                ["model"],
                registry=registry,
            )

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, PriceOverride] | None = None,
        *,
        project_overrides: Mapping[int, Mapping[str, PriceOverride]] | None = None,
        path: Path | None = None,
        registry: CollectorRegistry | None = None,
    ) -> Catalog:
        """The shipped catalog (or the CSV at ``path``) with configuration overrides applied."""
        if path is None:
            source = files("bastion.catalog").joinpath("data", "model_prices.csv")
            text, where = source.read_text(encoding="utf-8"), "model_prices.csv"
        else:
            text, where = path.read_text(encoding="utf-8"), str(path)
        models = {info.name: info for info in _parse_csv(text, where)}
        models = _apply(models, overrides or {})
        project_models = {
            project_id: {
                name: info
                for name, info in _apply(models, project_prices).items()
                if name in project_prices
            }
            for project_id, project_prices in (project_overrides or {}).items()
        }
        return cls(models, project_models=project_models, registry=registry)

    def lookup(self, model: str | None, *, project_id: int | None = None) -> ModelInfo | None:
        """The catalog entry for ``model`` as a producer or provider spelled it, if any.

        Provider routes (``openai/…``), Bedrock ids, Vertex ``@date`` and snapshot date or
        ``-latest`` suffixes are stripped one at a time; a name is never matched by prefix, so
        one model family is never priced as another.
        """
        if not model:
            return None
        key = (project_id if project_id in self._project_models else None, model)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        found: ModelInfo | None = None
        for candidate in _candidates(model):
            found = self._exact(candidate, key[0])
            if found is not None:
                break
        with self._lock:
            if len(self._resolved) > 100_000:  # producers sending unbounded model names
                self._resolved.clear()
            self._resolved[key] = found
        return found

    def cost_of(self, span: Span, *, project_id: int | None = None) -> float | None:
        """The span's cost from its tokens and the served (else requested) model's prices."""
        for name in (span.response_model, span.request_model):
            info = self.lookup(name, project_id=project_id)
            if info is not None:
                return info.cost(
                    span.input_tokens, span.output_tokens, span.cached_tokens,
                    span.cache_write_tokens,
                )  # fmt: skip
        return None

    def price_span(self, project_id: int, span: Span) -> None:
        """Set ``span.cost_usd`` unless the producer reported it or the span has no tokens."""
        if span.cost_usd is not None or (span.input_tokens is None and span.output_tokens is None):
            return
        span.cost_usd = self.cost_of(span, project_id=project_id)
        if span.cost_usd is None:
            self._count_unpriced(span.model or "(no model)")

    def models(self) -> list[ModelInfo]:
        """Every model of the shared catalog, by name."""
        return sorted(self._models.values(), key=lambda m: m.name)

    def deprecated(self, on: date | None = None) -> list[ModelInfo]:
        """Models whose deprecation date is ``on`` (default today, UTC) or earlier."""
        day = on or datetime.now(UTC).date()
        return [m for m in self.models() if m.is_deprecated(day)]

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self.models())

    def __len__(self) -> int:
        return len(self._models)

    def _exact(self, name: str, project_id: int | None) -> ModelInfo | None:
        if project_id is not None:
            found = self._project_models[project_id].get(name)
            if found is not None:
                return found
        return self._models.get(name)

    def _count_unpriced(self, model: str) -> None:
        model = model[:200]
        with self._lock:
            first = model not in self.unknown_models
            self.unknown_models[model] = self.unknown_models.get(model, 0) + 1
        if self._unpriced is not None:
            self._unpriced.labels(model=model).inc()
        if first:
            log.warning(
                "no price for model %r: its spans are stored with cost null; add it under "
                "`prices:` in bastion.yaml (USD per million tokens) to price it",
                model,
            )


def _candidates(model: str) -> Iterator[str]:
    """``model`` and the names it may be listed under, most specific first."""
    seen: set[str] = set()
    name = model.strip()
    queue = [name, name.lower()]
    while queue:
        current = queue.pop(0)
        if current in seen or not current:
            continue
        seen.add(current)
        yield current
        if "/" in current:
            queue.append(current.rsplit("/", 1)[1])
        bedrock = _BEDROCK.match(current)
        if bedrock:
            queue.append(bedrock.group(1))
        for pattern in (_VERTEX_DATE, _DATE_SUFFIX, _SHORT_DATE_SUFFIX):
            stripped = pattern.sub("", current)
            if stripped != current:
                queue.append(stripped)
        if current.endswith("-latest"):
            queue.append(current.removesuffix("-latest"))


def _apply(
    models: dict[str, ModelInfo], overrides: Mapping[str, PriceOverride]
) -> dict[str, ModelInfo]:
    out = dict(models)
    for name, override in overrides.items():
        changes = {k: v for k, v in override.model_dump().items() if v is not None}
        base = out.get(name) or ModelInfo(name=name)
        out[name] = replace(base, **changes)
    return out


def _parse_csv(text: str, where: str) -> list[ModelInfo]:
    reader = csv.DictReader(StringIO(text))
    known = {f.name for f in fields(ModelInfo)}
    missing = {"model", *_PRICE_FIELDS} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(sorted(missing))}")
    out: list[ModelInfo] = []
    for row in reader:
        line = reader.line_num
        values: dict[str, object] = {"name": (row.get("model") or "").strip()}
        if not values["name"]:
            raise ValueError(f"{where}:{line}: empty model name")
        for column, raw in row.items():
            if column is None or column == "model" or column not in known:
                continue
            cell = (raw or "").strip()
            if not cell:
                continue
            try:
                values[column] = _convert(column, cell)
            except ValueError:
                raise ValueError(f"{where}:{line}: column {column!r}: bad value {cell!r}") from None
        out.append(ModelInfo(**values))  # type: ignore[arg-type]
    return out


def _convert(column: str, cell: str) -> object:
    if column in _PRICE_FIELDS:
        price = float(cell)
        if price < 0 or price != price:
            raise ValueError(cell)
        return price
    if column in ("max_input_tokens", "max_output_tokens"):
        return int(float(cell))
    if column == "deprecation_date":
        return date.fromisoformat(cell)
    return cell
