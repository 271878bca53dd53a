"""What a goal conversion records of the converting event (the goal revenue)."""

from __future__ import annotations

from datetime import UTC, datetime

from afterglow.journeys import engine as d

AT = datetime(2026, 3, 2, tzinfo=UTC)


class TestGoalValue:
    def test_an_order_goal_records_the_order_and_its_total(self):
        ev = d.Occurrence(
            "e1",
            "afterglow.order.placed.v1",
            AT,
            {"order_id": "o-2", "total": {"amount": 7000, "currency": "USD"}},
        )
        assert d.goal_value(ev) == d.GoalValue("o-2", 7000, "USD")

    def test_a_goal_without_a_total_records_no_revenue(self):
        ev = d.Occurrence("e2", "afterglow.review.submitted.v1", AT, {"review_id": "r1"})
        assert d.goal_value(ev) == d.GoalValue(None, None, None)
