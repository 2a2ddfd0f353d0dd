"""What eval storage modules share: their errors and canonical JSON."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from bastion.evals.datasets import DatasetError
from bastion.store.storable import storable_json

__all__ = ["DatasetLockedError", "EvalStoreError", "canonical_json", "stable_hash", "utc_now"]


class EvalStoreError(LookupError):
    """An unknown dataset, dataset version or run; the message names it."""


class DatasetLockedError(DatasetError):
    """New content pushed under a dataset name whose newest version is locked."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def canonical_json(value: Any) -> str:
    """Sorted-key JSON of ``value``, storable (:mod:`bastion.store.storable`)."""
    return storable_json(value, sort_keys=True, non_str_keys=True)


def stable_hash(value: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value).encode()).hexdigest()
