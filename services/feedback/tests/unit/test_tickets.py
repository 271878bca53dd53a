"""Support tickets' rules: times, the CSAT schedule and fatigue, percentiles."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from afterglow.events import catalog as c
from afterglow.feedback import tickets

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
DAY = timedelta(days=1)


def run(*events: tuple[str, object]) -> tickets.Ticket:
    t = None
    for etype, data in events:
        t = tickets.apply(t, etype, data, "t", "cus", timedelta(hours=24))
    assert t is not None
    return t


class TestApply:
    def test_csat_due_24h_after_the_first_solve_only(self):
        t = run(
            (tickets.OPENED, c.TicketOpened(ticket_id="k", helpdesk="zendesk", opened_at=T0)),
            (tickets.RESOLVED, c.TicketResolved(ticket_id="k", resolved_at=T0 + DAY)),
            (tickets.RESOLVED, c.TicketResolved(ticket_id="k", resolved_at=T0 + 3 * DAY)),
        )
        assert (t.csat_status, t.csat_due_at) == ("due", T0 + 2 * DAY)
        assert t.resolved_at == T0 + 3 * DAY

    def test_the_earliest_agent_reply_is_the_first_response_whatever_the_order(self):
        late = c.TicketUpdated(
            ticket_id="k", updated_at=T0, status="open", agent_replied_at=T0 + DAY
        )
        early = late.model_copy(update={"agent_replied_at": T0 + timedelta(minutes=5)})
        t = run((tickets.UPDATED, late), (tickets.UPDATED, early))
        assert t.first_response_at == T0 + timedelta(minutes=5)

    def test_fatigue(self):
        window = timedelta(days=30)
        assert tickets.csat_decision(None, T0, window) is None
        assert tickets.csat_decision(T0 - 31 * DAY, T0, window) is None
        assert tickets.csat_decision(T0 - DAY, T0, window) is not None


@given(st.lists(st.floats(min_value=0, max_value=1e7), min_size=1, max_size=50))
def test_median_is_the_statistics_median(values):
    assert abs(tickets.percentile(values, 0.5) - statistics.median(values)) < 1e-6  # type: ignore[operator]
