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
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000

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
