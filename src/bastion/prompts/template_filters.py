"""The allowlisted template filters, each behind its guard (see ``template_guards``).

Text filters measure a non-text input before converting it and check what they built; filters
that walk a sequence in Python walk it through the budget, one unit of work per item; the
sorting ones (a Python key per element inside one sort call) are refused up front when their
predicted cost exceeds the time left; ``join``, ``replace``, ``wordwrap``, ``indent``, ``sum``
and ``tojson`` compute the size of what they would build first. Short inputs (the common case)
take a direct path as fast as the bare filter: their work and results are a few kB at most.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sized
from typing import Any

import jinja2.exceptions as jex
from jinja2 import pass_environment, pass_eval_context
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext

from bastion.prompts.template_budget import current_budget, printed_size
from bastion.prompts.template_guards import (
    MAX_INDENT,
    as_text,
    check_result,
    is_int,
    text_size,
)

__all__ = ["guard_filters"]

Filter = Callable[..., Any]

# Estimated CPU cost of work Python does in one uninterruptible call, per element or character;
# deliberately pessimistic (measured on a loaded two-core machine), used by RenderBudget.predict.
_SORT_NS = 2_000  # sort, dictsort: a Python key function per element, then the sort
_GROUPBY_NS = 5_000  # groupby: a sort plus a group object per run
_WRAP_NS = 300  # wordwrap: textwrap splits and measures every word in Python...
_WRAP_LINE_NS = 2_000  # ...and more per character the narrower the lines (this / width)
_TITLE_NS = 150  # title: a regex split and two slices per word
_SPLIT_NS = 40  # wordcount: a new string per word
_COPY_NS = 1  # list concatenation by `sum`: one pointer copied per element per step
_SEQUENCES = (str, bytes, bytearray, list, tuple)
# Inputs this small take the direct path: a few microseconds of work, a result of a few kB.
_SHORT_TEXT = 1024
_FEW_ITEMS = 64
_SMALL = (list, tuple, dict, str)


def _value_index(base: Filter) -> int:
    # Filters marked pass_context/pass_environment/pass_eval_context get that first.
    return 1 if hasattr(base, "jinja_pass_arg") else 0


def _text_filter(name: str, base: Filter, ns_per_char: float = 2.0) -> Filter:
    """A filter that converts its input to text: measured first, result checked after."""
    index = _value_index(base)

    @functools.wraps(base)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        value = args[index]
        if value.__class__ is str and len(value) <= _SHORT_TEXT:
            return base(*args, **kwargs)
        budget = current_budget()
        budget.tick()
        size = text_size(budget, value, f"'{name}'")
        budget.predict(size * ns_per_char * 1e-9, f"'{name}' of {size:,} characters")
        return check_result(budget, base(*args, **kwargs), f"'{name}'")

    return guarded


def _walking_filter(name: str, base: Filter) -> Filter:
    """A filter that walks its input in Python: each item it takes counts."""
    index = _value_index(base)

    @functools.wraps(base)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        value = args[index]
        if value.__class__ in _SMALL and len(value) <= _FEW_ITEMS:
            return base(*args, **kwargs)
        budget = current_budget()
        budget.tick()
        walked = budget.iterate(value)
        return base(*args[:index], walked, *args[index + 1 :], **kwargs)

    return guarded


def _sorting_filter(name: str, base: Filter, ns_per_item: float) -> Filter:
    """A filter that sorts in one call: refused up front when it cannot finish in time."""
    index = _value_index(base)

    @functools.wraps(base)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        value = args[index]
        if value.__class__ in _SMALL and len(value) <= _FEW_ITEMS:
            return base(*args, **kwargs)
        budget = current_budget()
        if not isinstance(value, Sized):
            value = list(budget.iterate(value))
            args = (*args[:index], value, *args[index + 1 :])
        count = len(value)
        budget.tick(1 + count // 1024)
        budget.predict(count * ns_per_item * 1e-9, f"'{name}' of {count:,} items")
        return base(*args, **kwargs)

    return guarded


def _attributes(environment: Any, items: list[Any], attribute: Any) -> list[Any]:
    if attribute is None:
        return items
    getter = make_attrgetter(environment, attribute)
    return [getter(item) for item in current_budget().iterate(items)]


def _few_short_texts(value: Any, separator: Any, attribute: Any) -> bool:
    """Whether a join is of a few short strings (the common case, joined without measuring)."""
    if attribute is not None or separator.__class__ is not str or len(separator) > _SHORT_TEXT:
        return False
    if value.__class__ not in (list, tuple) or len(value) > _FEW_ITEMS:
        return False
    for item in value:  # noqa: SIM110 - all() over a generator costs more than the join
        if item.__class__ is not str or len(item) > _SHORT_TEXT:
            return False
    return True


def _make_join(base: Filter) -> Filter:
    @pass_eval_context
    def join(eval_ctx: EvalContext, value: Any, d: Any = "", attribute: Any = None) -> Any:
        if _few_short_texts(value, d, attribute):
            return str(d.join(value))  # what the filter does with text and no autoescape
        budget = current_budget()
        items = _attributes(eval_ctx.environment, list(budget.iterate(value)), attribute)
        limit = budget.limits.max_output_bytes
        size = text_size(budget, d, "'join'") * max(len(items) - 1, 0)
        for item in items:
            size += printed_size(item, limit, budget)
            if size > limit:
                break
        budget.check_size(size, "'join'")
        return base(eval_ctx, items, d)

    return join


def _make_replace(base: Filter) -> Filter:
    @pass_eval_context
    def replace(eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        budget = current_budget()
        budget.tick()
        text, old_s, new_s = (as_text(budget, v, "'replace'") for v in (s, old, new))
        hits = text.count(old_s) if old_s else len(text) + 1
        if is_int(count) and count >= 0:
            hits = min(hits, count)
        budget.check_size(len(text) + hits * (len(new_s) - len(old_s)), "'replace'")
        return base(eval_ctx, text, old_s, new_s, count)

    return replace


def _make_wordwrap(base: Filter) -> Filter:
    @pass_environment
    def wordwrap(
        environment: Any,
        s: Any,
        width: Any = 79,
        break_long_words: bool = True,
        wrapstring: Any = None,
        break_on_hyphens: bool = True,
    ) -> Any:
        budget = current_budget()
        budget.tick()
        text = as_text(budget, s, "'wordwrap'")
        wrap = environment.newline_sequence if wrapstring is None else wrapstring
        wrap = as_text(budget, wrap, "'wordwrap'")
        if isinstance(width, int | float):
            # Two consecutive lines hold at least `width` characters between them.
            lines = 2 * len(text) // max(int(width), 1) + text.count("\n") + 2
            budget.check_size(len(text) + lines * len(wrap), "'wordwrap'")
        per_char = _WRAP_NS + _WRAP_LINE_NS / max(width if isinstance(width, int) else 1, 1)
        budget.predict(len(text) * per_char * 1e-9, f"'wordwrap' of {len(text):,} characters")
        return base(environment, text, width, break_long_words, wrap, break_on_hyphens)

    return wordwrap


def _make_sum() -> Filter:
    @pass_environment
    def sum_(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        budget = current_budget()
        values = _attributes(environment, list(budget.iterate(iterable)), attribute)
        if isinstance(start, _SEQUENCES):
            # Concatenation: each step copies the running total.
            total = len(start) + sum(len(v) for v in values if isinstance(v, _SEQUENCES))
            budget.check_size(total, "'sum'")
            budget.predict(len(values) * total * _COPY_NS * 1e-9, "'sum' of sequences")
        return sum(values, start)

    return sum_


def _make_indent(base: Filter) -> Filter:
    def indent(value: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
        size = width if isinstance(width, int) else len(width)
        if size > MAX_INDENT:
            raise jex.SecurityError(f"indent wider than {MAX_INDENT}")
        budget = current_budget()
        text = as_text(budget, value, "'indent'")
        budget.check_size(len(text) + (text.count("\n") + 1) * max(size, 0), "'indent'")
        return str(base(text, width, first, blank))

    return indent


def tojson(value: Any, indent: int | None = None) -> str:
    """JSON as written (Jinja's own escapes <, >, & and ' for HTML), measured first."""
    if indent is not None and not 0 <= indent <= MAX_INDENT:
        raise jex.SecurityError(f"tojson indent must be 0..{MAX_INDENT}")
    budget = current_budget()
    text_size(budget, value, "'tojson'")
    out = json.dumps(value, ensure_ascii=False, sort_keys=True, indent=indent)
    return str(check_result(budget, out, "'tojson'"))


_TEXT_FILTERS = {
    **dict.fromkeys(("capitalize", "lower", "upper", "trim", "string", "truncate"), 2.0),
    "title": _TITLE_NS,
    "wordcount": _SPLIT_NS,
}
_WALKING_FILTERS = [*("list", "map", "max", "min", "reject", "rejectattr", "select"), "selectattr"]
_WALKING_FILTERS += ["unique"]
_SORTING_FILTERS = {"sort": _SORT_NS, "dictsort": _SORT_NS, "groupby": _GROUPBY_NS}
# Constant work, or bounded by their input in C: nothing to guard.
_PLAIN_FILTERS = ["abs", "count", "d", "default", "first", "float", "int", "items", "last"]
_PLAIN_FILTERS += ["length", "reverse", "round"]


def _direct(method: Callable[[str], str], guarded: Filter) -> Filter:
    """A text filter that is one `str` method: called directly on short text (the hot path)."""

    @functools.wraps(guarded)
    def direct(value: Any) -> Any:
        if value.__class__ is str and len(value) <= _SHORT_TEXT:
            return method(value)
        return guarded(value)

    return direct


def _direct_trim(guarded: Filter) -> Filter:
    @functools.wraps(guarded)
    def trim(value: Any, chars: str | None = None) -> Any:
        if value.__class__ is str and len(value) <= _SHORT_TEXT:
            return value.strip(chars)
        return guarded(value, chars)

    return trim


# Filters that are `soft_str(value).<method>()` in Jinja: the same method, on text.
_STR_METHODS: dict[str, Callable[[str], str]] = {
    "capitalize": str.capitalize,
    "lower": str.lower,
    "upper": str.upper,
}


def guard_filters(base: Mapping[str, Filter]) -> dict[str, Filter]:
    """The allowlisted filters, each wrapped in its guard (scalar ones are left as they are).

    Allowlist: text shaping only. Gone: attr (dynamic attribute names), format (% formatting),
    center/batch/slice (allocate by an argument), random, pprint, urlize and the HTML ones.
    """
    out: dict[str, Filter] = {name: base[name] for name in _PLAIN_FILTERS}
    for name, cost in _TEXT_FILTERS.items():
        out[name] = _text_filter(name, base[name], cost)
        if name in _STR_METHODS:
            out[name] = _direct(_STR_METHODS[name], out[name])
    out["trim"] = _direct_trim(out["trim"])
    for name in _WALKING_FILTERS:
        out[name] = _walking_filter(name, base[name])
    for name, cost in _SORTING_FILTERS.items():
        out[name] = _sorting_filter(name, base[name], cost)
    out["join"] = _make_join(base["join"])
    out["replace"] = _make_replace(base["replace"])
    out["wordwrap"] = _make_wordwrap(base["wordwrap"])
    out["indent"] = _make_indent(base["indent"])
    out["sum"] = _make_sum()
    out["tojson"] = tojson
    return out
