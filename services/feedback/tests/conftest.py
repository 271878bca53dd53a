"""One feedback app (lifespan: relay, consumers) for the whole suite, on the real stack,
with a ManualClock the tests move. Tests isolate themselves by tenant id."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from afterglow.devstack.testing import ServiceHarness, service_fixture
from afterglow.events import CloudEvent
from afterglow.events.catalog import SurveyRequested
from afterglow.feedback import service
from afterglow.feedback.app import create_app
from afterglow.feedback.models import Survey
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.clock import ManualClock

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Feedback(ServiceHarness):
    default_scopes = ("feedback:read", "feedback:write")

    @property
    def settings(self) -> FeedbackSettings:
        assert isinstance(self.runtime.settings, FeedbackSettings)
        return self.runtime.settings

    async def key(self, tenant: str, scopes: list[str] | None = None) -> dict[str, str]:
        return await self.headers(tenant, scopes)

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


def _settings() -> FeedbackSettings:
    return FeedbackSettings(
        public_base_url="http://testserver",
        relay_poll_interval_s=0.2,
        consumer_retry_attempts=2,
        consumer_retry_base_delay_s=0.05,
        log_json=False,
    )


fb = service_fixture(
    create_app,
    _settings,
    harness=Feedback,
    start=START,
    topics=("afterglow.surveys", "afterglow.messages", "afterglow.reviews"),
)


@pytest.fixture
def at_start(fb: Feedback) -> ManualClock:
    """Tests that move the clock start from the same instant."""
    fb.clock.set(START)
    return fb.clock
