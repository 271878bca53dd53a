from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from afterglow.events import (
    EVENT_TYPES,
    CloudEvent,
    InvalidEventData,
    MalformedEvent,
    UnknownEventType,
    derived_event_id,
    from_record,
    to_record,
)
from afterglow.events.catalog import OrderPlaced
from afterglow.events.envelope import url_uuid5
from afterglow.events.samples import sample_events


def _event(data, tenant="acme", subject="cust-1"):
    return CloudEvent.new(
        data,
        tenant_id=tenant,
        subject=subject,
        source="tests",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )


class TestRoundTrip:
    def test_samples_cover_the_whole_catalog(self):
        assert {s.type for s in sample_events()} == set(EVENT_TYPES)

    @pytest.mark.parametrize("data", sample_events(), ids=lambda d: d.type)
    def test_every_type_survives_the_wire(self, data):
        event = _event(data)
        record = to_record(event)
        parsed = from_record(record.key, record.value, record.headers)
        assert parsed == event
        assert record.key == b"acme:cust-1"
        assert record.topic == event.topic
        headers = dict(record.headers)
        assert headers["ce_type"] == data.type.encode()
        assert headers["ce_specversion"] == b"1.0"
        assert "type" not in json.loads(record.value)

    def test_unknown_fields_are_ignored_so_producers_can_add_fields(self):
        record = to_record(_event(sample_events()[0]))
        body = json.loads(record.value) | {"loyalty_hint": "new-in-a-later-release"}
        parsed = from_record(record.key, json.dumps(body).encode(), record.headers)
        assert isinstance(parsed.data, OrderPlaced)

    def test_a_type_in_the_body_yields_to_the_header(self):
        # The body is read straight into the header type's model; a body naming another
        # type is read the long way, where the header's type wins, as it always did.
        record = to_record(_event(sample_events()[0]))
        body = json.loads(record.value) | {"type": "afterglow.order.refunded.v1"}
        parsed = from_record(record.key, json.dumps(body).encode(), record.headers)
        assert isinstance(parsed.data, OrderPlaced)
        assert parsed.type == parsed.data.type == "afterglow.order.placed.v1"


class TestMalformed:
    def _record(self):
        return to_record(_event(sample_events()[0]))

    def test_missing_header(self):
        r = self._record()
        headers = [(k, v) for k, v in r.headers if k != "ce_id"]
        with pytest.raises(MalformedEvent, match="ce_id"):
            from_record(r.key, r.value, headers)

    def test_body_not_json(self):
        r = self._record()
        with pytest.raises(MalformedEvent, match="not JSON"):
            from_record(r.key, b"{nope", r.headers)

    def test_body_not_an_object(self):
        r = self._record()
        with pytest.raises(MalformedEvent, match="JSON object"):
            from_record(r.key, b"[1, 2]", r.headers)

    def test_unknown_type(self):
        r = self._record()
        headers = [(k, b"afterglow.order.placed.v9" if k == "ce_type" else v) for k, v in r.headers]
        with pytest.raises(UnknownEventType):
            from_record(r.key, r.value, headers)

    def test_invalid_data_names_the_field(self):
        r = self._record()
        body = json.loads(r.value)
        body["total"]["amount"] = "12.99"
        with pytest.raises(InvalidEventData, match=r"total\.amount"):
            from_record(r.key, json.dumps(body).encode(), r.headers)

    def test_money_is_never_a_float(self):
        r = self._record()
        body = json.loads(r.value)
        body["total"]["amount"] = 12.5
        with pytest.raises(InvalidEventData):
            from_record(r.key, json.dumps(body).encode(), r.headers)

    def test_naive_timestamp_is_rejected(self):
        r = self._record()
        body = json.loads(r.value)
        body["placed_at"] = "2026-03-02T14:30:00"
        with pytest.raises(InvalidEventData, match="placed_at"):
            from_record(r.key, json.dumps(body).encode(), r.headers)

    def test_key_must_match_tenant_and_subject(self):
        r = self._record()
        with pytest.raises(MalformedEvent, match="key"):
            from_record(b"other:cust-1", r.value, r.headers)

    def test_tenant_cannot_smuggle_the_key_separator(self):
        with pytest.raises(ValueError, match="tenant id"):
            _event(sample_events()[0], tenant="evil:tenant")


class TestMessageVariables:
    def test_a_request_must_carry_what_its_template_needs(self):
        from afterglow.events.catalog import MessageRequested

        with pytest.raises(ValueError, match="referral_code"):
            MessageRequested(
                request_id="r",
                kind="referral_invite",
                variables={"referral_url": "https://x.test/?ref=A"},
            )
        ok = MessageRequested(
            request_id="r",
            kind="referral_invite",
            variables={"referral_url": "u", "referral_code": "A"},
        )
        assert ok.kind == "referral_invite"


class TestDerivedIds:
    """url_uuid5 builds the UUIDv5 text itself (faster than the uuid module): ids already
    stored (instances, timers, derived events) must come out the same."""

    @given(st.text(max_size=120))
    def test_same_text_as_the_uuid_module(self, name):
        assert url_uuid5(name) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))

    def test_derived_event_id_is_unchanged(self):
        expected = uuid.uuid5(uuid.NAMESPACE_URL, "afterglow:journeys\x1facme\x1fi-1\x1fstage")
        assert derived_event_id("journeys", "acme", "i-1", "stage") == str(expected)


class TestSubject:
    @pytest.mark.parametrize("bad", ["a\x00b", "tab\there", "line\nbreak", "\x1f"])
    def test_control_characters_are_refused(self, bad):
        with pytest.raises(ValidationError, match="control characters"):
            _event(sample_events()[0], subject=bad)

    @pytest.mark.parametrize("fine", ["cust-1", "émile@example.com", "a b", "\x7f-del"])
    def test_printable_subjects_pass(self, fine):
        assert _event(sample_events()[0], subject=fine).subject == fine


@pytest.mark.parametrize(
    "parts",
    [
        ("journeys", "acme", "i-1", "stage", "t-1", "stage", "survey"),
        ("journey-step", "0f6a53ec-6b22-579b-a66a-09ae02618157", "1:0"),
        ("ünïcode", "顧客", ""),
        ("",),
    ],
)
def test_a_derived_id_is_the_uuid5_of_its_parts(parts: tuple[str, ...]) -> None:
    # Ids already stored and published were made by uuid.uuid5: the faster
    # computation must give the very same string, or a retried cause would not be
    # recognised as a repeat.
    name = "afterglow:" + "\x1f".join(parts)
    assert derived_event_id(*parts) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))
