"""The collector settings a started service runs with (afterglow.kit.heap)."""

from __future__ import annotations

import gc

from afterglow.kit import heap


def test_a_settled_heap_is_frozen_once_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_threshold()[0] == heap.GEN0_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        frozen = gc.get_freeze_count()
        assert frozen > 0  # this test process's modules at least
        garbage = [object() for _ in range(1000)]
        heap.settle()  # a second app in the same process
        assert gc.get_freeze_count() == frozen  # not frozen again
        del garbage
    finally:
        gc.set_threshold(*before)
