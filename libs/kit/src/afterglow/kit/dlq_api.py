"""The dead letters of one service over REST, for the console's DLQ queue: every service
gets this router from :func:`afterglow.kit.app.create_service_app`.

The same reading and redriving as ``afterglow dlq`` (:mod:`afterglow.kit.dlq_cli`, both
through :mod:`afterglow.events.dlq`), narrowed twice, because a DLQ topic is shared by
every tenant and every service that reads its topic:

- a tenant's key sees and redrives only its own letters (``ce_tenantid``); a letter of
  another tenant is not found, as anything else of theirs;
- a service shows only the letters its own consumers (``x-consumer`` ``<service>.*``)
  dead-lettered, and those without a consumer (the message dispatcher's) on the DLQs of
  topics it reads.

A redrive here names its letters by offset, so it never moves the operators' redrive
cursor (the CLI's plain ``redrive``). Redriving a letter twice publishes it twice, and
every consumer's inbox drops the repeat: nothing is applied twice.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from afterglow.events import KafkaConfig
from afterglow.events.dlq import DeadLetter, dlq_name, read_dead_letters, redrive
from afterglow.kit import openapi
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.errors import NotFound, Unprocessable
from afterglow.kit.routing import service_router

READ_SCOPE, WRITE_SCOPE = "dlq:read", "dlq:write"
MAX_OFFSETS = 500

_LETTER = {
    "offset": 12,
    "event_id": "0b6c0c9e-2f4a-4f57-9d7e-3c7f3b1f9a10",
    "type": "afterglow.order.placed.v1",
    "tenant": "acme",
    "consumer": "journeys.engine",
    "attempts": "5",
    "error": "ValueError: ...",
    "topic": "afterglow.orders",
}


class RedriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"offsets": [12]}]})
    offsets: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=MAX_OFFSETS)


class LetterOut(BaseModel):
    """One dead letter, as ``DeadLetter.summary`` reads it from its headers."""

    offset: int
    event_id: str | None = Field(description="The CloudEvent id (ce_id)")
    type: str | None = Field(description="The CloudEvent type (ce_type)")
    tenant: str | None
    consumer: str | None = Field(description="The consumer group that gave up on it")
    attempts: str | None = Field(description="How many times it was tried")
    error: str | None = Field(description="The last error, as the consumer saw it")
    topic: str | None = Field(description="The topic it came from, where a redrive sends it")


class DeadLettersOut(BaseModel):
    dlqs: dict[str, list[LetterOut]] = Field(description="DLQ topic -> this tenant's letters")


class RedrivenOut(BaseModel):
    dlq: str
    redriven: list[LetterOut]


def dlq_router(service: str, topics: list[str], kafka: KafkaConfig) -> APIRouter:
    """``GET /v1/dlq`` and ``POST /v1/dlq/{topic}/redrive`` for ``service``, whose
    consumers read ``topics``."""
    router = service_router(tags=["dead letters"])
    dlqs = sorted({dlq_name(t) for t in topics})

    def mine(tenant: str) -> Any:
        def keep(letter: DeadLetter) -> bool:
            consumer = letter.header("x-consumer")
            return letter.header("ce_tenantid") == tenant and (
                consumer is None or consumer.startswith(f"{service}.")
            )

        return keep

    @router.get(
        "/v1/dlq",
        summary=f"This tenant's dead letters in {service}'s DLQs (scope {READ_SCOPE})",
        responses=openapi.example(200, {"dlqs": {"afterglow.orders.dlq": [_LETTER]}}),
    )
    async def list_dead_letters(
        principal: Principal = Depends(require_scope(READ_SCOPE)),
    ) -> DeadLettersOut:
        keep = mine(principal.tenant_id)

        async def letters_of(name: str) -> list[LetterOut]:
            try:
                letters = await read_dead_letters(kafka, name)
            except LookupError:
                letters = []  # the topic was never created: no letter yet
            return [LetterOut.model_validate(d.summary()) for d in letters if keep(d)]

        # Each DLQ's read waits for its end; side by side, the page waits for one.
        found = await asyncio.gather(*(letters_of(n) for n in dlqs))
        return DeadLettersOut(dlqs=dict(zip(dlqs, found, strict=True)))

    @router.post(
        "/v1/dlq/{topic}/redrive",
        summary=f"Publish dead letters back to their topic (scope {WRITE_SCOPE})",
        responses=openapi.errors(
            openapi.example(200, {"dlq": "afterglow.orders.dlq", "redriven": [_LETTER]}),
            openapi.error(404, "Not this service's DLQ", "not_found", "no such DLQ", "topic"),
        ),
    )
    async def redrive_dead_letters(
        # A Kafka topic name's own characters: anything else (a NUL, a slash) is a 422
        # naming the topic, before the body is looked at.
        topic: Annotated[
            str, Path(pattern=r"^[A-Za-z0-9._-]{1,249}$", examples=["afterglow.orders"])
        ],
        body: RedriveIn,
        principal: Principal = Depends(require_scope(WRITE_SCOPE)),
    ) -> RedrivenOut:
        name = dlq_name(topic)
        if name not in dlqs:
            raise NotFound(f"{service} reads no topic whose DLQ is {name}", field="topic")
        keep = mine(principal.tenant_id)
        wanted = set(body.offsets)
        # A dry run first: every offset named must be one of this tenant's letters here,
        # or nothing is published (a typo must not redrive half a list).
        found = await redrive(kafka, name, offsets=wanted, where=keep, dry_run=True)
        missing = wanted - {d.offset for d in (*found.redriven, *found.same_event)}
        if missing:
            raise Unprocessable(
                f"no dead letter of this tenant at offsets {sorted(missing)}", field="offsets"
            )
        report = await redrive(kafka, name, offsets=wanted, where=keep)
        return RedrivenOut(
            dlq=name, redriven=[LetterOut.model_validate(d.summary()) for d in report.redriven]
        )

    return router
