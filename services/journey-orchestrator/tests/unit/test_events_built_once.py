"""The events a journey step emits are built without validating them a second time
(store._event, store._stage_changed): they must be the events the validating
constructors build, and what comes from outside must still be refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import MetaData

from afterglow.events import (
    CloudEvent,
    MalformedEvent,
    Outbox,
    event_tables,
    from_record,
    to_record,
)
from afterglow.events import catalog as c
from afterglow.journeys import engine as d
from afterglow.journeys import store
from afterglow.journeys.handlers import occurrence

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
OUTBOX = Outbox(event_tables(MetaData(schema="journeys")))
JOURNEYS = {(d.DEFAULT_JOURNEY.name, 1): d.DEFAULT_JOURNEY}
ACTIVE = {d.DEFAULT_JOURNEY.name: 1}


def _placed(tenant: str = "shop-1", customer: str = "c-1", **data: Any) -> CloudEvent[Any]:
    event = CloudEvent.new(
        c.OrderPlaced(
            order_id=data.get("order_id", "o-1"),
            platform="api",
            placed_at=NOW,
            customer=c.CustomerInfo(),
            total=c.Money(amount=1000, currency="USD"),
        ),
        tenant_id=tenant,
        subject=customer,
        source="tests",
        id=data.get("id"),
    )
    r = to_record(event)
    return from_record(r.key, r.value, r.headers)  # as the consumer hands it over


def _emitted(event: CloudEvent[Any], occ: d.Occurrence | None = None) -> list[CloudEvent[Any]]:
    changes = store.Changes(OUTBOX, NOW)
    occ = occ or occurrence(event)
    outcome = d.handle_event(JOURNEYS, ACTIVE, [], d.Profile(), occ, NOW)
    for res in outcome.results:
        changes.step(event.tenantid, event.subject, d.DEFAULT_JOURNEY, res, outcome.profile)
    return changes.events


def _validated(event: CloudEvent[Any]) -> CloudEvent[Any]:
    """The same event through the validating constructors (data, then envelope)."""
    data = type(event.data)(**{f: getattr(event.data, f) for f in type(event.data).model_fields})
    fields = {f: getattr(event, f) for f in CloudEvent.model_fields}
    return CloudEvent(**{**fields, "data": data})


def test_the_events_of_a_step_are_those_the_validating_constructors_build():
    emitted = _emitted(_placed())
    assert {e.type for e in emitted} >= {c.JourneyStageChanged.model_fields["type"].default}
    for event in emitted:
        again = _validated(event)
        assert event == again
        assert to_record(event) == to_record(again)  # the same bytes on the wire


def test_a_cause_with_a_control_character_is_refused_as_before():
    # An envelope's id is not checked for control characters; the transition it causes
    # carries it, and the stage event refuses it (the batch's record goes to the DLQ).
    event = _placed()
    occ = occurrence(event)
    bad = d.Occurrence("evt\x01id", occ.type, occ.at, occ.data)
    with pytest.raises(ValidationError, match="control characters"):
        _emitted(event, bad)


@pytest.mark.parametrize(
    ("tenant", "customer"), [("Not A Tenant", "c-1"), ("shop-1", "c\x00-1"), ("shop-1", "")]
)
def test_an_envelope_that_is_invalid_never_reaches_the_engine(tenant, customer):
    # The tenant and customer of the events a step emits are those of the consumed
    # event: one whose envelope is invalid is refused when its record is parsed.
    good = to_record(_placed())
    headers = [
        (
            k,
            tenant.encode()
            if k == "ce_tenantid"
            else customer.encode()
            if k == "ce_subject"
            else v,
        )
        for k, v in good.headers
    ]
    with pytest.raises(MalformedEvent):
        from_record(f"{tenant}:{customer}".encode(), good.value, headers)


def test_the_engine_sees_an_events_data_as_json_values_without_its_type():
    event = _placed(order_id="o-9")
    occ = occurrence(event)
    assert occ.data == event.data.model_dump(mode="json", exclude={"type"})
    assert "type" not in occ.data
    assert occ.data["order_id"] == "o-9"
    assert occ.data["placed_at"] == "2026-03-01T12:00:00Z"  # JSON values, not datetimes
    assert occ.at == NOW  # when it happened: the data's placed_at
    assert (occ.id, occ.type) == (event.id, event.type)
