"""Keep Python's cyclic garbage collector from stalling a busy server.

The collector runs whenever allocations of container objects outnumber deallocations by the
young generation's threshold (700 by default). A 500-span OTLP request allocates thousands of
containers that stay alive until their batch commits, so at the default the collector ran about
150 times a second, promoted the spans in flight to the older generations, and its full
collections traversed every object of the process, imported modules included: 2.6 s of a
13 s single-process ingest run (a fifth of it) with the GIL held. Spans hold no reference
cycles; reference counting frees them whatever the threshold, so a higher one only changes how
often the collector looks for cycles.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc(young_threshold: int) -> None:
    """Freeze what startup allocated and raise the young generation's threshold.

    Call it once, in a server process's entry point: ``gc.freeze`` moves every object alive
    now (modules, metadata, settings) out of the collector's sight for good, which a test
    process creating many apps must not do.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
