"""One feedback app (lifespan: relay, consumers) for the whole suite, on the real stack,
with a ManualClock the tests move. Tests isolate themselves by tenant id."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events.catalog import SurveyRequested
from afterglow.events.testing import TopicTap
from afterglow.feedback import service
from afterglow.feedback.app import create_app
from afterglow.feedback.models import Survey
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.app import Runtime
from afterglow.kit.clock import ManualClock

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@dataclass
class Feedback:
    client: httpx.AsyncClient
    runtime: Runtime
    clock: ManualClock
    producer: Any
    tap: TopicTap

    @property
    def settings(self) -> FeedbackSettings:
        assert isinstance(self.runtime.settings, FeedbackSettings)
        return self.runtime.settings

    async def key(self, tenant: str, scopes: list[str] | None = None) -> dict[str, str]:
        async with self.runtime.sessionmaker.begin() as s:
            key = await self.runtime.api_keys.create(
                s, tenant, scopes or ["feedback:read", "feedback:write"]
            )
        return {"Authorization": f"Bearer {key}"}

    async def publish(self, event: CloudEvent[Any]) -> None:
        rec = to_record(event)
        await self.producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=rec.headers)

    async def survey_direct(
        self, tenant: str, customer: str = "c-1", kind: str = "nps", order_id: str | None = None
    ) -> tuple[Survey, str]:
        """A survey created by the same code the consumer runs (no broker round trip),
        and the path of its page."""
        request_id = f"req-{uuid.uuid4().hex[:8]}"
        event = CloudEvent.new(
            SurveyRequested(
                request_id=request_id, kind=kind, order_id=order_id, requested_at=self.clock.now()
            ),  # type: ignore[arg-type]
            tenant_id=tenant,
            subject=customer,
            source="tests",
        )
        async with self.runtime.sessionmaker.begin() as s:
            await service.handle_survey_requested(
                s, self.runtime.outbox, self.settings, event, self.clock.now()
            )
            survey = (
                await s.execute(
                    select(Survey).where(
                        Survey.tenant_id == tenant, Survey.request_id == request_id
                    )
                )
            ).scalar_one()
        return survey, f"/s/{service.survey_token(self.settings, survey)}"


# Module scope: an app left running would keep consuming in its service's consumer
# groups while later tests (other services, the e2e processes) use the same groups.
@pytest.fixture(scope="module")
async def fb(stack: Stack) -> AsyncIterator[Feedback]:
    clock = ManualClock(START)
    settings = FeedbackSettings(
        public_base_url="http://testserver",
        relay_poll_interval_s=0.2,
        consumer_retry_attempts=2,
        consumer_retry_base_delay_s=0.05,
        log_json=False,
    )
    app = create_app(settings, clock)
    producer = build_producer(
        KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
    )
    await producer.start()
    try:
        async with (
            TopicTap(
                stack.kafka_bootstrap_servers,
                "afterglow.surveys",
                "afterglow.messages",
                "afterglow.reviews",
            ) as tap,
            serve_app(app) as client,
        ):
            yield Feedback(client, app.state.runtime, clock, producer, tap)
    finally:
        await producer.stop()


@pytest.fixture
def at_start(fb: Feedback) -> ManualClock:
    """Tests that move the clock start from the same instant."""
    fb.clock.set(START)
    return fb.clock
