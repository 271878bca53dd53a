"""CloudEvents 1.0 envelope in Kafka binary mode.

Attributes travel as ``ce_*`` headers, the JSON body is the event's ``data``, and the
record key is ``{tenant}:{customer}`` so that one customer's events stay on one
partition, in order. Parsing never trusts a record: anything that is not a well-formed
event of a known type raises a :class:`MalformedEvent` subclass, which the consumer
runtime sends to the dead-letter topic.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from afterglow.events.catalog import EVENT_TYPES, CatalogEvent, EventData, parse_data, topic_for
from afterglow.events.context import current_traceparent

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
# Tenants are the first half of every key, so they may not contain the separator.
TENANT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_SUBJECT_LENGTH = 200
# What _subject_printable refuses (a C0 control character), as one regex search: a
# generator over the characters cost more than the rest of the envelope's validation.
_SUBJECT_CONTROL = re.compile(r"[\x00-\x1f]")

D = TypeVar("D", bound=EventData)


class MalformedEvent(ValueError):
    """A record that is not a valid Afterglow CloudEvent. Permanent: retrying cannot help."""


class UnknownEventType(MalformedEvent):
    """The ``ce_type`` is not in the catalog (a newer version, or a stranger)."""


class InvalidEventData(MalformedEvent):
    """The body does not satisfy the catalog model of its type."""


class CloudEvent(BaseModel, Generic[D]):
    """One event: CloudEvents attributes plus the typed ``data`` from the catalog."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=200)
    type: str
    time: AwareDatetime
    subject: str = Field(min_length=1, max_length=MAX_SUBJECT_LENGTH)
    tenantid: str
    traceparent: str | None = None
    specversion: str = SPEC_VERSION
    data: D

    @field_validator("tenantid")
    @classmethod
    def _tenant_shape(cls, value: str) -> str:
        if not TENANT_ID_PATTERN.match(value):
            raise ValueError("tenant id must match ^[a-z0-9][a-z0-9_-]{0,62}$")
        return value

    @field_validator("subject")
    @classmethod
    def _subject_printable(cls, value: str) -> str:
        if _SUBJECT_CONTROL.search(value):
            raise ValueError("subject must not contain control characters")
        return value

    @property
    def key(self) -> str:
        return record_key(self.tenantid, self.subject)

    @property
    def topic(self) -> str:
        return topic_for(self.type)

    @classmethod
    def new(
        cls,
        data: D,
        *,
        tenant_id: str,
        subject: str,
        source: str,
        id: str | None = None,
        time: datetime | None = None,
        traceparent: str | None = None,
    ) -> CloudEvent[D]:
        """Build an event. Pass ``id`` when the cause has a stable id of its own (a
        webhook delivery, an inbound event), so that a retried cause yields the same id
        and downstream inboxes drop the repeat.

        ``traceparent`` defaults to that of the work in progress (the request, event or
        timer being handled: :mod:`afterglow.events.tracing`), so every event a cause
        leads to joins its trace without each call site passing it on."""
        attributes: dict[str, Any] = {
            "id": id or str(uuid.uuid4()),
            "source": source,
            "type": data.type,
            "time": time or datetime.now(UTC),
            "subject": subject,
            "tenantid": tenant_id,
            "traceparent": current_traceparent.get() if traceparent is None else traceparent,
            "data": data,
        }
        # CloudEvent itself (what CloudEvent[D] resolves to, through a lookup in
        # pydantic's cache of generic classes on every call).
        return CloudEvent(**attributes)


def record_key(tenant_id: str, subject: str) -> str:
    """The record key of a customer's events: one customer's events share a partition."""
    return f"{tenant_id}:{subject}"


# The class every parsed event is an instance of, resolved once: ``CloudEvent[...]``
# looks the parametrised class up in pydantic's cache (hashing the catalog's union of
# every event type) on every call, once per record consumed.
_PARSED_EVENT = CloudEvent[CatalogEvent]


def derived_event_id(*parts: str) -> str:
    """A deterministic event id from the ids of its cause (UUIDv5), stable across retries."""
    return url_uuid5("afterglow:" + "\x1f".join(parts))


_URL_NAMESPACE = hashlib.sha1(uuid.NAMESPACE_URL.bytes, usedforsecurity=False)


def url_uuid5(name: str) -> str:
    """``str(uuid.uuid5(uuid.NAMESPACE_URL, name))``, the same text, about three times
    as fast: the namespace is hashed once and no UUID object is built. Every event a
    journey step emits takes two or three of these (its id, its request id, the
    instance's id), ~6% of the engine consumer's Python with the uuid module's."""
    digest = _URL_NAMESPACE.copy()
    digest.update(name.encode())
    b = bytearray(digest.digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class KafkaRecord:
    """What goes on the wire: topic, key, JSON value and ``ce_*`` headers."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def header_texts(event: CloudEvent[Any]) -> list[tuple[str, str]]:
    """The record's headers as text, in order (:func:`to_record` encodes them; the
    outbox stores them as JSON text without encoding them first)."""
    return headers_of(
        event.id,
        event.source,
        event.type,
        event.time,
        event.subject,
        event.tenantid,
        event.traceparent,
    )


def headers_of(
    id: str,
    source: str,
    type: str,
    time: datetime,
    subject: str,
    tenantid: str,
    traceparent: str | None,
) -> list[tuple[str, str]]:
    """The headers of an event with these attributes (:func:`header_texts`), for a
    producer that has them without an envelope model (afterglow.events.outbox_row)."""
    headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", id),
        ("ce_source", source),
        ("ce_type", type),
        ("ce_time", time.isoformat()),
        ("ce_subject", subject),
        ("ce_tenantid", tenantid),
        ("content-type", CONTENT_TYPE),
    ]
    if traceparent:
        headers.append(("ce_traceparent", traceparent))
    return headers


# The data's own type goes as a header, not in the body.
_NOT_IN_BODY = {"type"}


def body_bytes(event: CloudEvent[Any]) -> bytes:
    """The record's value: the event's data as JSON, without its type (a header)."""
    return data_bytes(event.data)


def data_bytes(data: BaseModel) -> bytes:
    """An event's data as its record's value (:func:`body_bytes`): what
    ``model_dump_json(exclude={"type"})`` writes, encoded, from the model's serializer
    straight to bytes (no str in between)."""
    return type(data).__pydantic_serializer__.to_json(data, exclude=_NOT_IN_BODY)


def to_record(event: CloudEvent[Any]) -> KafkaRecord:
    headers = [(name, value.encode()) for name, value in header_texts(event)]
    return KafkaRecord(
        topic=event.topic, key=event.key.encode(), value=body_bytes(event), headers=headers
    )


_REQUIRED = (
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_subject",
    "ce_tenantid",
)


def from_record(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> CloudEvent[CatalogEvent]:
    """Parse a Kafka record into a typed event, or raise :class:`MalformedEvent`."""
    attrs: dict[str, str] = {}
    try:
        for name, raw in headers:
            if name.startswith("ce_"):
                attrs[name] = raw.decode()
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"header is not UTF-8: {exc}") from exc
    missing = [h for h in _REQUIRED if h not in attrs]
    if missing:
        raise MalformedEvent(f"missing CloudEvents headers: {', '.join(missing)}")
    if attrs["ce_specversion"] != SPEC_VERSION:
        raise MalformedEvent(f"unsupported specversion {attrs['ce_specversion']!r}")
    event_type = attrs["ce_type"]
    if event_type not in EVENT_TYPES:
        raise UnknownEventType(f"unknown event type {event_type!r}")
    if value is None:
        raise MalformedEvent("record has no body")
    try:
        # The body straight from its bytes into its type's model (pydantic-core parses
        # the JSON): json.loads into dicts first, then validating those, was ~10% of
        # the engine consumer's Python per event. Whatever that refuses (not JSON, a
        # ``type`` of its own in the body, invalid data) goes the long way below, which
        # accepts and refuses exactly as before and says why.
        data = EVENT_TYPES[event_type].model_validate_json(value)
    except ValueError:  # pydantic's ValidationError is one
        data = _parse_body(event_type, value)
    try:
        event = _PARSED_EVENT(
            id=attrs["ce_id"],
            source=attrs["ce_source"],
            type=event_type,
            time=datetime.fromisoformat(attrs["ce_time"]),
            subject=attrs["ce_subject"],
            tenantid=attrs["ce_tenantid"],
            traceparent=attrs.get("ce_traceparent"),
            data=data,
        )
    except ValidationError as exc:
        raise InvalidEventData(_describe(exc)) from exc
    except ValueError as exc:  # datetime.fromisoformat
        raise MalformedEvent(str(exc)) from exc
    if key is not None and key.decode(errors="replace") != event.key:
        raise MalformedEvent(f"record key {key!r} does not match {event.key!r}")
    return event


def _parse_body(event_type: str, value: bytes) -> Any:
    """The body as a dict, its ``type`` set from the header, validated against the
    catalog; raises :class:`MalformedEvent` saying what is wrong with it."""
    try:
        body = json.loads(value)
    except ValueError as exc:
        raise MalformedEvent(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise MalformedEvent("body must be a JSON object")
    body["type"] = event_type
    try:
        return parse_data(body)
    except ValidationError as exc:
        raise InvalidEventData(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
