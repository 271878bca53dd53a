"""Support as a programme: a CSAT survey 24 h after a ticket is solved (once per ticket,
within the survey fatigue window), and first-response and resolution times per week
and channel. Ticket events go in through the broker as orders-ingest publishes them;
the clock is the app's ManualClock; the CSAT round is also run directly, so that
"nothing is due yet" is a fact about the data, not about a wait."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from afterglow.events import CloudEvent
from afterglow.events import catalog as c
from afterglow.events.testing import eventually
from afterglow.feedback import service, support, tickets
from afterglow.feedback.models import SupportTicket, Survey

from ..conftest import Feedback

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

pytestmark = pytest.mark.timeout(120)


async def publish(fb: Feedback, tenant: str, customer: str, data: Any) -> None:
    await fb.publish(
        CloudEvent.new(data, tenant_id=tenant, subject=customer, source="afterglow/orders-ingest")
    )


async def ticket_row(fb: Feedback, tenant: str, ticket_id: str, check: Any) -> SupportTicket:
    async def probe() -> SupportTicket | None:
        async with fb.runtime.sessionmaker() as s:
            return await s.get(SupportTicket, (tenant, ticket_id))

    row = await eventually(probe, lambda r: r is not None and check(r), timeout=30)
    assert row is not None
    return row


async def solved_ticket(
    fb: Feedback,
    tenant: str,
    customer: str,
    ticket_id: str,
    opened: datetime,
    *,
    replied_after: timedelta | None = None,
    solved_after: timedelta = HOUR,
    channel: str = "email",
) -> SupportTicket:
    await publish(
        fb,
        tenant,
        customer,
        c.TicketOpened(ticket_id=ticket_id, helpdesk="zendesk", opened_at=opened, channel=channel),
    )
    if replied_after is not None:
        await publish(
            fb,
            tenant,
            customer,
            c.TicketUpdated(
                ticket_id=ticket_id,
                updated_at=opened + replied_after,
                status="open",
                agent_replied_at=opened + replied_after,
            ),
        )
    await publish(
        fb,
        tenant,
        customer,
        c.TicketResolved(ticket_id=ticket_id, resolved_at=opened + solved_after),
    )
    return await ticket_row(fb, tenant, ticket_id, lambda r: r.resolved_at is not None)


async def csat_surveys(fb: Feedback, tenant: str, customer: str) -> list[Survey]:
    async with fb.runtime.sessionmaker() as s:
        rows = await s.scalars(
            select(Survey).where(
                Survey.tenant_id == tenant, Survey.customer_id == customer, Survey.kind == "csat"
            )
        )
        return list(rows)


class TestCsatAfterSolve:
    async def test_one_invite_24_hours_after_the_solve(self, fb, tenant_id, at_start):
        customer, ticket = f"cus-{uuid.uuid4().hex[:6]}", f"zendesk:{uuid.uuid4().hex[:6]}"
        solved_at = at_start.now() + HOUR
        row = await solved_ticket(fb, tenant_id, customer, ticket, at_start.now())
        assert (row.csat_status, row.csat_due_at) == ("due", solved_at + 24 * HOUR)

        at_start.advance(24 * HOUR)  # 23 h after the solve: not due
        await support.send_due_csat(fb.runtime)
        assert await csat_surveys(fb, tenant_id, customer) == []

        at_start.advance(HOUR)  # 24 h after the solve
        [invite] = await fb.tap.wait_for(
            lambda e: (
                e.tenantid == tenant_id
                and e.subject == customer
                and e.type == "afterglow.message.requested.v1"
                and e.data.variables.get("survey_kind") == "csat"
            ),
            timeout=30,
        )
        assert invite.data.kind == "survey_invite"
        [survey] = await csat_surveys(fb, tenant_id, customer)
        assert (survey.ticket_id, survey.request_id) == (ticket, f"csat:{ticket}")
        await ticket_row(fb, tenant_id, ticket, lambda r: r.csat_status == "sent")

        # Reopened and solved again: once per ticket, no second survey.
        await publish(
            fb, tenant_id, customer, c.TicketResolved(ticket_id=ticket, resolved_at=at_start.now())
        )
        await ticket_row(fb, tenant_id, ticket, lambda r: r.resolved_at == at_start.now())
        at_start.advance(2 * DAY)
        await support.send_due_csat(fb.runtime)
        assert len(await csat_surveys(fb, tenant_id, customer)) == 1

    async def test_no_invite_for_a_second_ticket_inside_the_fatigue_window(
        self, fb, tenant_id, at_start
    ):
        customer = f"cus-{uuid.uuid4().hex[:6]}"
        first, second = f"zendesk:a{uuid.uuid4().hex[:6]}", f"zendesk:b{uuid.uuid4().hex[:6]}"
        await solved_ticket(fb, tenant_id, customer, first, at_start.now())
        at_start.advance(25 * HOUR)
        await ticket_row(fb, tenant_id, first, lambda r: r.csat_status == "sent")

        await solved_ticket(fb, tenant_id, customer, second, at_start.now())
        at_start.advance(25 * HOUR)
        row = await ticket_row(fb, tenant_id, second, lambda r: r.csat_status == "skipped")
        assert row.csat_reason is not None and "30-day fatigue window" in row.csat_reason
        assert [s.ticket_id for s in await csat_surveys(fb, tenant_id, customer)] == [first]


class TestSupportTimes:
    async def test_median_and_p90_per_week_and_channel_match_hand_computed(
        self, fb, tenant_id, at_start
    ):
        monday = datetime.fromisoformat("2026-03-02T09:00:00+00:00")  # ISO week 10
        # email: first responses 60 s, 300 s, 1200 s; resolutions 1 h, 2 h, 24 h.
        email = [(60, 3600), (300, 7200), (1200, 86400)]
        for n, (reply, solve) in enumerate(email):
            await solved_ticket(
                fb,
                tenant_id,
                f"cus-{n}",
                f"zendesk:e{n}",
                monday + n * HOUR,
                replied_after=timedelta(seconds=reply),
                solved_after=timedelta(seconds=solve),
            )
        # chat: one ticket answered in 30 s, still open (no resolution time).
        await publish(
            fb,
            tenant_id,
            "cus-chat",
            c.TicketOpened(
                ticket_id="zendesk:c1", helpdesk="zendesk", opened_at=monday, channel="chat"
            ),
        )
        await publish(
            fb,
            tenant_id,
            "cus-chat",
            c.TicketUpdated(
                ticket_id="zendesk:c1",
                updated_at=monday + timedelta(seconds=30),
                status="open",
                agent_replied_at=monday + timedelta(seconds=30),
            ),
        )
        await ticket_row(fb, tenant_id, "zendesk:c1", lambda r: r.first_response_at is not None)

        h = await fb.key(tenant_id, ["feedback:read"])
        r = await fb.client.get(
            "/v1/metrics/support",
            params={"from": "2026-03-02T00:00:00+00:00", "to": "2026-03-09T00:00:00+00:00"},
            headers=h,
        )
        assert r.status_code == 200, r.text
        weeks = {w["channel"]: w for w in r.json()["weeks"]}
        assert set(weeks) == {"chat", "email"}
        # Hand-computed, linear interpolation between ranks: p90 of (60, 300, 1200) is
        # at rank 0.9 * 2 = 1.8: 300 + 0.8 * (1200 - 300) = 1020.
        assert weeks["email"]["week"] == "2026-03-02T00:00:00+00:00"
        assert weeks["email"]["tickets"] == 3
        assert weeks["email"]["first_response_s"] == {"count": 3, "median": 300.0, "p90": 1020.0}
        # 7200 + 0.8 * (86400 - 7200) = 70560
        assert weeks["email"]["resolution_s"] == {"count": 3, "median": 7200.0, "p90": 70560.0}
        assert weeks["chat"]["first_response_s"] == {"count": 1, "median": 30.0, "p90": 30.0}
        assert weeks["chat"]["resolution_s"] == {"count": 0, "median": None, "p90": None}
        # The pure reference agrees with the database's percentile_cont.
        assert tickets.percentile([60, 300, 1200], 0.9) == 1020.0

    async def test_csat_by_ticket_next_to_the_times(self, fb, tenant_id, at_start):
        customer, ticket = f"cus-{uuid.uuid4().hex[:6]}", f"zendesk:{uuid.uuid4().hex[:6]}"
        await solved_ticket(fb, tenant_id, customer, ticket, at_start.now())
        at_start.advance(25 * HOUR)
        await support.send_due_csat(fb.runtime)
        [survey] = await csat_surveys(fb, tenant_id, customer)
        path = f"/s/{service.survey_token(fb.settings, survey)}"
        answer = await fb.client.post(
            path,
            content="score=2&comment=slow",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert answer.status_code == 200, answer.text
        h = await fb.key(tenant_id, ["feedback:read"])
        # (``to`` is exclusive, and the answer came at the clock's now)
        until = (at_start.now() + HOUR).isoformat()
        r = await fb.client.get("/v1/metrics/support", params={"to": until}, headers=h)
        assert r.status_code == 200, r.text
        [csat] = r.json()["csat_by_ticket"]
        assert (csat["ticket_id"], csat["score"], csat["satisfied"]) == (ticket, 2, False)
