"""The events a journey step emits are built without validating them a second time
and straight into their outbox rows, without an envelope model (store._event,
store._stage_changed, afterglow.events.outbox_row): they must be the rows of the events
the validating constructors build, and what comes from outside must still be refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_core import from_json
from sqlalchemy import MetaData

from afterglow.events import (
    CloudEvent,
    KafkaRecord,
    MalformedEvent,
    Outbox,
    OutboxRow,
    event_tables,
    from_record,
    to_record,
)
from afterglow.events import catalog as c
from afterglow.events.context import current_traceparent
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


def _emitted(event: CloudEvent[Any], occ: d.Occurrence | None = None) -> list[OutboxRow]:
    changes = store.Changes(OUTBOX, NOW)
    occ = occ or occurrence(event)
    outcome = d.handle_event(JOURNEYS, ACTIVE, [], d.Profile(), occ, NOW)
    for res in outcome.results:
        changes.step(event.tenantid, event.subject, d.DEFAULT_JOURNEY, res, outcome.profile)
    return changes.events


def _published(row: OutboxRow) -> KafkaRecord:
    """The record the relay sends for ``row`` (OutboxRelay._publish)."""
    headers = [(k, v.encode()) for k, v in from_json(row.headers)]
    return KafkaRecord(topic=row.topic, key=row.key.encode(), value=row.value, headers=headers)


def _validated(event: CloudEvent[Any]) -> CloudEvent[Any]:
    """The same event through the validating constructors (data, then envelope)."""
    data = type(event.data)(**{f: getattr(event.data, f) for f in type(event.data).model_fields})
    fields = {f: getattr(event, f) for f in CloudEvent.model_fields}
    return CloudEvent(**{**fields, "data": data})


def test_the_events_of_a_step_are_those_the_validating_constructors_build():
    emitted = _emitted(_placed())
    assert {r.event_type for r in emitted} >= {
        c.JourneyStageChanged.model_fields["type"].default,
        c.MessageRequested.model_fields["type"].default,
    }
    for row in emitted:
        record = _published(row)
        # As a consumer reads it: every header and the data validated.
        parsed = from_record(record.key, record.value, record.headers)
        again = _validated(parsed)
        assert parsed == again
        assert OutboxRow.of(again) == row  # the row the validated envelope makes
        assert to_record(again) == record  # the same bytes on the wire


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


def test_the_events_of_a_step_carry_the_trace_of_the_event_that_caused_them():
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    token = current_traceparent.set(traceparent)
    try:
        emitted = _emitted(_placed())
    finally:
        current_traceparent.reset(token)
    assert emitted
    for row in emitted:
        assert ("ce_traceparent", traceparent.encode()) in _published(row).headers
    # Outside any trace, none.
    for row in _emitted(_placed()):
        assert "ce_traceparent" not in dict(_published(row).headers)
