"""afterglow.events.trusted.construct builds what model_construct builds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from afterglow.events import CloudEvent
from afterglow.events import catalog as c
from afterglow.events.trusted import construct

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)


def _same(a: BaseModel, b: BaseModel) -> None:
    assert type(a) is type(b)
    assert list(a.__dict__.items()) == list(b.__dict__.items())  # values and field order
    assert a.model_fields_set == b.model_fields_set
    assert a.__pydantic_extra__ == b.__pydantic_extra__
    assert a.__pydantic_private__ == b.__pydantic_private__
    assert a.model_dump_json() == b.model_dump_json()


def test_an_envelope_is_the_one_model_construct_builds_defaults_included() -> None:
    data = c.JourneyStageChanged.model_construct(
        instance_id="i1",
        journey="post_purchase",
        version=1,
        from_stage=None,
        to_stage="onboarding",
        cause="e1",
        changed_at=NOW,
        order_id="o1",
    )
    attrs = dict(
        id="e2", source="journeys", type=data.type, time=NOW, subject="c1", tenantid="t1",
        traceparent=None, data=data,
    )  # fmt: skip
    built = construct(CloudEvent, dict(attrs))
    _same(built, CloudEvent.model_construct(**attrs))
    assert built.specversion == "1.0"  # a default the values left out
    assert "specversion" not in built.model_fields_set


class _Mutable(BaseModel):
    name: str
    tags: list[str] = Field(default_factory=list)
    seen: dict[str, int] = {}  # a mutable default: pydantic copies it per model


def test_mutable_defaults_are_fresh_per_model_as_model_construct_makes_them() -> None:
    a, b = construct(_Mutable, {"name": "a"}), construct(_Mutable, {"name": "b"})
    a.tags.append("x")
    a.seen["x"] = 1
    assert b.tags == [] and b.seen == {}
    _same(b, _Mutable.model_construct(name="b"))


def test_a_missing_required_field_is_refused_not_left_out() -> None:
    with pytest.raises(KeyError, match=r"_Mutable\.name"):
        construct(_Mutable, {"tags": []})


class _Aliased(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(alias="n")


class _Private(BaseModel):
    name: str
    _cache: int = PrivateAttr(default=7)


class _Extra(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


@pytest.mark.parametrize(
    ("cls", "values"),
    [(_Aliased, {"n": "a"}), (_Private, {"name": "a"}), (_Extra, {"name": "a", "more": 1})],
)
def test_what_the_plain_path_cannot_build_goes_through_model_construct(
    cls: type[BaseModel], values: dict[str, object]
) -> None:
    built = construct(cls, dict(values))
    _same(built, cls.model_construct(**values))
