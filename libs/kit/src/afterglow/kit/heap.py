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
  poll's batches are not interrupted by dozens of young collections. The threshold
  counts objects allocated and not yet freed, so above what the batches of a poll hold
  alive at their peak (their events, models, rows and statements' parameters) a
  batch's objects are freed by their reference counts before a young collection ever
  walks them. At 10,000, the journey engine consuming 6,000 order.placed ran 41 young
  and 3 middle collections that walked the batches' live objects and freed almost
  nothing (~4,800 objects): 165-490 ms, 30-80 us per event. 100,000 held polls of 500
  records; polls of 4,000 (ServiceSettings.consumer_max_records) hold up to ~275,000
  objects alive at once (four partitions' transactions in flight), and at 100,000 the
  engine ran 27 young collections for 15,000 order.placed: 182 ms, ~12 us per event,
  freeing 4,400 objects. At 1,000,000: none in that window, the process's CPU per
  event 219 -> 202 us (three runs each, alternated). What it costs: garbage in cycles
  waits for that many net allocations before it is found; the collections above found
  ~160 such objects per 100,000 allocations, so ~1,600 objects, not a million, in
  practice.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 1_000_000

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
