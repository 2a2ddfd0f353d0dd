"""Finding the spans of a batch the database refuses, so that the others can be committed.

When a batch fails with a data error (:func:`bastion.store.write_errors.is_data_error`), it is
split in halves, each written in its own transaction, and a half that fails again is split
again, until every refused span stands alone: about two transactions per halving, so a batch
of 5,000 spans with one bad span costs some 26 small ones. Spans of every project in the
batch are committed on the way; the refused ones are returned for the dead-letter store.
An outage met on the way ends the search: the caller keeps the whole batch (spooled), and
writes being idempotent, what was committed meanwhile is skipped when it is written again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bastion.store.dead_letters import Rejected
from bastion.store.write_errors import is_data_error
from bastion.tracing.model import Span

__all__ = ["UnpreparableSpans", "write_isolating"]

Pairs = Sequence[tuple[int, Span]]


class UnpreparableSpans(Exception):
    """Rows could not be built for some spans (the data is at fault, not the database)."""


def _refused_for_data(exc: BaseException) -> bool:
    return isinstance(exc, UnpreparableSpans) or is_data_error(exc)


def write_isolating(
    pairs: Pairs, write: Callable[[Pairs], int], *, failed_with: BaseException | None = None
) -> tuple[int, list[Rejected]]:
    """Write ``pairs`` with ``write`` (one transaction a call, returning how many spans were
    new), isolating the spans refused for a data reason; returns the count written and those.

    ``failed_with`` is the data error the whole of ``pairs`` already failed with (the batch
    is then split at once). Any other error (an outage) is raised as it is.
    """
    written = 0
    rejected: list[Rejected] = []
    if failed_with is None:
        parts = [list(pairs)]
    elif len(pairs) == 1:
        return 0, [_rejected(pairs[0], failed_with)]
    else:
        parts = _halves(list(pairs))
    while parts:
        part = parts.pop()
        try:
            written += write(part)
        except Exception as exc:
            if not _refused_for_data(exc):
                raise
            if len(part) == 1:
                rejected.append(_rejected(part[0], exc))
            else:
                parts.extend(_halves(part))
    return written, rejected


def _halves(part: list[tuple[int, Span]]) -> list[list[tuple[int, Span]]]:
    # Popped from the end: the first half is written first, keeping the batch's order.
    middle = len(part) // 2
    return [part[middle:], part[:middle]]


def _rejected(pair: tuple[int, Span], exc: BaseException) -> Rejected:
    cause = exc.__cause__ if isinstance(exc, UnpreparableSpans) and exc.__cause__ else exc
    return Rejected(pair[0], pair[1], cause)
