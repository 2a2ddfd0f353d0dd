"""Server processes freeze their startup objects and collect cycles less often."""

from __future__ import annotations

import gc

import pytest

from bastion.server.gc_tuning import tune_gc
from bastion.settings import Settings


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(50_000)
        assert gc.get_threshold() == (50_000, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_threshold_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().gc_young_threshold == 50_000
    monkeypatch.setenv("BASTION_GC_YOUNG_THRESHOLD", "2000")
    assert Settings().gc_young_threshold == 2_000
