"""Migration between versions: where a running instance lands in a new version of its
journey, or why it cannot move."""

from __future__ import annotations

from afterglow.journeys.engine.definition import Journey
from afterglow.journeys.engine.paths import resolve
from afterglow.journeys.engine.state import InstanceState


def migrate(
    old: Journey, new: Journey, new_version: int, st: InstanceState
) -> tuple[InstanceState | None, str]:
    """Where ``st`` lands in ``new``, or None and why it cannot move."""
    if st.stage_index >= len(old.stages):
        return None, "already past the last stage"
    names = [s.name for s in new.stages]
    here = old.stages[st.stage_index].name
    if here not in names:
        return None, f"stage {here!r} does not exist in v{new_version}"
    idx = names.index(here)
    moved = st.model_copy(deep=True, update={"version": new_version, "stage_index": idx})
    if st.pc is None:
        return moved, f"waiting for {here!r}; delay recomputed from the same anchors"
    a_old = resolve(old.stages[st.stage_index], st.pc)
    a_new = resolve(new.stages[idx], st.pc)
    if a_old is None or a_new is None or a_old.type != a_new.type:
        return None, f"in the middle of {here!r} and its actions differ in v{new_version}"
    return moved, f"in {here!r} at the same {a_new.type} step"
