"""The garbage collector tuned for a long-running service.

CPython's cyclic collector walks every tracked object of the generations it collects.
A service allocates its long-lived objects (modules, classes, the ORM's mappers,
compiled statements, pydantic schemas) once at startup, and every full collection
walked them again; on the journey engine's timer round the collector was about a
sixth of the Python time (a timer round 1,720-1,850/s before, 2,220-2,380/s after,
measured alternately in one window; at 1,000 webhooks/s a full collection paused
ingest's event loop 140-160 ms twice in 10 s). Two moves:

* ``gc.freeze()`` once the service has started: what exists then goes to the
  permanent generation, never walked again (the move CPython documents for servers).
  Once per process: an object frozen and later dropped is only reclaimed if its
  reference count says so, so freezing each app of a test session would keep the
  cycles of the apps started before.
* a larger first generation (``GEN0_THRESHOLD`` allocations instead of 700), so a
  batch of a few hundred events is not interrupted by dozens of young collections.
  The threshold counts objects allocated and not yet freed, so above what a batch
  holds alive at its peak (its events, models, rows and statements' parameters: tens
  of thousands for 500 order.placed) a batch's objects are freed by their reference
  counts before a young collection ever walks them. At 10,000, the journey engine
  consuming 6,000 order.placed ran 41 young and 3 middle collections that walked the
  batches' live objects and freed almost nothing (~4,800 objects): 165-490 ms, 30-80 us
  per event. At 100,000: one collection, 27 ms. Garbage in cycles waits for at most
  that many net allocations before it is found (10-20 MB of objects, worst case).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 100_000

_frozen = False


def settle() -> None:
    """Call once the service is up (the app's lifespan does)."""
    global _frozen
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
