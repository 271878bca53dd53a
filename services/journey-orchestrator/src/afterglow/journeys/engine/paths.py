"""Action paths: where an instance is inside its stage. ``pc`` is ``[i]`` for the stage's
i-th action, ``[i, branch, j, ...]`` inside a split's branch."""

from __future__ import annotations

from typing import Any

from afterglow.journeys.engine.definition import Journey, SplitAction, Stage
from afterglow.journeys.engine.state import InstanceState


def current_stage(j: Journey, s: InstanceState) -> Stage:
    return j.stages[s.stage_index]


def children(action: Any, branch: int) -> list[Any]:
    if isinstance(action, SplitAction):
        return (
            action.branches[branch].actions if branch < len(action.branches) else action.otherwise
        )
    return []


def resolve(stage: Stage, pc: list[int]) -> Any | None:
    """pc = [i] or [i, branch, j, branch, k, ...]."""
    actions: list[Any] = stage.actions
    action = None
    for depth in range(0, len(pc), 2):
        i = pc[depth]
        if i >= len(actions):
            return None
        action = actions[i]
        if depth + 1 < len(pc):
            actions = children(action, pc[depth + 1])
    return action


def next_pc(stage: Stage, pc: list[int]) -> list[int] | None:
    p = list(pc)
    p[-1] += 1
    while True:
        if resolve(stage, p) is not None:
            return p
        if len(p) == 1:
            return None
        p = p[:-2]
        p[-1] += 1


def step_key(st: InstanceState, pc: list[int]) -> str:
    return f"{st.stage_index}:{'.'.join(map(str, pc))}"
