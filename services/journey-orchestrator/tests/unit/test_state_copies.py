"""The engine's cheap copies: a step changes its copy, never the state it was given."""

from __future__ import annotations

import typing
from datetime import UTC, datetime

from pydantic import BaseModel

from afterglow.journeys import engine as d

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _containers(model: type[BaseModel]) -> set[str]:
    """The fields holding a list or a dict: what a copy must not share."""
    out = set()
    for name, f in model.model_fields.items():
        for t in (f.annotation, *typing.get_args(f.annotation)):
            if typing.get_origin(t) in (list, dict):
                out.add(name)
    return out


def _filled_state() -> d.InstanceState:
    return d.InstanceState(
        id="i1",
        journey="default",
        version=1,
        started_at=NOW,
        pc=[0, 1],
        anchors={d.PLACED: NOW},
    )


def _filled_profile() -> d.Profile:
    return d.Profile(
        spent={"EUR": 100},
        open_tickets=["t1"],
        resolved_tickets=["t0"],
        orders={"o1": {d.PLACED: NOW}},
    )


def test_every_container_of_a_state_is_copied() -> None:
    st = _filled_state()
    copy = st.copied()
    assert copy == st
    fields = _containers(d.InstanceState)
    assert fields == {"pc", "anchors"}  # a new container field must be copied too
    for name in fields:
        assert getattr(copy, name) is not getattr(st, name), name
    copy.pc.append(2)  # type: ignore[union-attr]
    copy.anchors["x"] = NOW
    assert st.pc == [0, 1] and list(st.anchors) == [d.PLACED]


def test_every_container_of_a_profile_is_copied() -> None:
    p = _filled_profile()
    copy = p.copied()
    assert copy == p
    fields = _containers(d.Profile)
    assert fields == {"spent", "open_tickets", "resolved_tickets", "orders"}
    for name in fields:
        assert getattr(copy, name) is not getattr(p, name), name
    copy.orders["o1"]["x"] = NOW  # the inner dicts too
    assert p.orders == {"o1": {d.PLACED: NOW}}


def test_projecting_an_event_leaves_the_profile_it_was_given() -> None:
    p = _filled_profile()
    before = p.model_dump()
    d.project(p, d.Occurrence("e1", d.PLACED, NOW, {"order_id": "o2"}))
    assert p.model_dump() == before
