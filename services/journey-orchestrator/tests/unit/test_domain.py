from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afterglow.journeys import engine as d

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def ev(type_: str, at: datetime, **data: object) -> d.SimEvent:
    return d.SimEvent(type=type_, at=at, data=data)


def placed(at: datetime = T0, order: str = "o1", amount: int = 5000) -> d.SimEvent:
    return ev("order.placed", at, order_id=order, total={"amount": amount, "currency": "USD"})


def flat(records: list[d.SimRecord]) -> list[tuple[str, str | None]]:
    return [(a.type, a.params.get("kind")) for r in records for a in r.actions]


def stages(records: list[d.SimRecord]) -> list[str | None]:
    return [t.to_stage for r in records for t in r.transitions if t.kind == "stage"]


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "td"),
        [
            ("P3D", timedelta(days=3)),
            ("PT1S", timedelta(seconds=1)),
            ("P1W", timedelta(days=7)),
            ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
            ("PT0.5S", timedelta(seconds=0.5)),
        ],
    )
    def test_parses_iso8601(self, text: str, td: timedelta) -> None:
        assert d.parse_duration(text) == td

    @pytest.mark.parametrize("text", ["P1M", "P", "3 days", "PT", "P1Y"])
    def test_rejects_months_and_garbage(self, text: str) -> None:
        with pytest.raises(ValueError):
            d.parse_duration(text)

    @given(st.integers(min_value=0, max_value=10**8))
    def test_format_round_trips(self, seconds: int) -> None:
        td = timedelta(seconds=seconds)
        assert d.parse_duration(d.format_duration(td)) == td


class TestDefinitionValidation:
    def test_error_points_at_the_offending_path(self) -> None:
        body = {
            **d.DEFAULT_JOURNEY_BODY,
            "stages": [dict(s) for s in d.DEFAULT_JOURNEY_BODY["stages"]],
        }
        body["stages"][2] = {
            **body["stages"][2],
            "actions": [{"type": "survey", "stop_after": "three days"}],
        }
        with pytest.raises(d.DefinitionError) as err:
            d.parse_journey(body)
        assert err.value.path == "stages[2].actions[0].stop_after"

    def test_unknown_key_is_an_error_not_ignored(self) -> None:
        with pytest.raises(d.DefinitionError) as err:
            d.parse_journey({"name": "x", "stages": [{"name": "a", "dealy": "P1D"}]})
        assert err.value.path == "stages[0].dealy"

    def test_unknown_anchor_event(self) -> None:
        with pytest.raises(d.DefinitionError) as err:
            d.parse_journey(
                {"name": "x", "stages": [{"name": "a", "wait": "P1D after order.shipped"}]}
            )
        assert err.value.path.startswith("stages[0].wait")

    def test_duplicate_stage_names(self) -> None:
        with pytest.raises(d.DefinitionError, match="twice"):
            d.parse_journey({"name": "x", "stages": [{"name": "a"}, {"name": "a"}]})

    def test_yaml_text_is_accepted(self) -> None:
        j = d.parse_journey(
            "name: quick\nstages:\n  - name: hello\n    wait: PT1S after order.delivered\n"
            "    actions:\n      - {type: message, kind: check_in}\n"
        )
        assert j.stages[0].wait is not None
        assert j.stages[0].wait.after == d.DELIVERED
        assert j.stages[0].wait.delay == timedelta(seconds=1)

    def test_default_round_trips_through_json(self) -> None:
        again = d.parse_journey(d.DEFAULT_JOURNEY.model_dump(mode="json"))
        assert again == d.DEFAULT_JOURNEY


def _advocacy(*actions: dict, when: dict | None = None) -> d.Journey:
    stage: dict = {"name": "advocacy", "actions": list(actions)}
    if when:
        stage["when"] = when
    return d.parse_journey({"name": "x", "stages": [{"name": "survey"}, stage]})


class TestReviewGating:
    """Asking only happy customers for reviews is refused (FTC rule, platform policies)."""

    PROMOTERS = {"nps_band": ["promoter"]}
    ASK = {"type": "request_review"}

    @pytest.mark.parametrize(
        ("journey", "path"),
        [
            (_advocacy({**ASK, "when": PROMOTERS}), "stages[1].actions[0]"),
            (_advocacy(ASK, when=PROMOTERS), "stages[1].actions[0]"),
            (
                _advocacy({"type": "split", "branches": [{"when": PROMOTERS, "actions": [ASK]}]}),
                "stages[1].actions[0].branches[0].actions[0]",
            ),
            # detractors take the branch, everyone else is asked: still gating
            (
                _advocacy(
                    {
                        "type": "split",
                        "branches": [{"when": {"nps_band": ["detractor"]}, "actions": []}],
                        "otherwise": [ASK],
                    }
                ),
                "stages[1].actions[0].otherwise[0]",
            ),
            # a review ask as a plain message is a review ask too
            (
                _advocacy({"type": "message", "kind": "review_request", "when": PROMOTERS}),
                "stages[1].actions[0]",
            ),
            # unhappy customers leave before the ask
            (
                _advocacy(
                    {"type": "exit", "reason": "unhappy", "when": {"nps_band": ["detractor"]}},
                    ASK,
                ),
                "stages[1].actions[0]",
            ),
        ],
    )
    def test_gated_asks_are_refused_at_their_path(self, journey: d.Journey, path: str) -> None:
        with pytest.raises(d.DefinitionError, match="review gating") as err:
            d.check_review_gating(journey)
        assert err.value.path == path

    def test_asking_everyone_with_a_band_only_delaying_it_is_fine(self) -> None:
        d.check_review_gating(d.DEFAULT_JOURNEY)  # detractors wait for their ticket first
        every_band = {"nps_band": ["promoter", "passive", "detractor", "none"]}
        d.check_review_gating(_advocacy({**self.ASK, "when": every_band}))
        # an exit on a band AFTER the ask drops nobody from it
        d.check_review_gating(
            _advocacy(self.ASK, {"type": "exit", "when": {"nps_band": ["detractor"]}})
        )
        # conditions that are not about sentiment are the tenant's business
        d.check_review_gating(_advocacy({**self.ASK, "when": {"first_order": True}}))


class TestDefaultJourney:
    def run(
        self, band: str | None, *, delivered: bool = True, extra: list[d.SimEvent] = ()
    ) -> list[d.SimRecord]:  # type: ignore[assignment]
        evs = [placed()]
        if delivered:
            evs.append(ev("order.delivered", T0 + timedelta(days=2), order_id="o1"))
        else:
            evs.append(ev("order.fulfilled", T0 + timedelta(days=1), order_id="o1"))
        if band:
            evs.append(
                ev("survey.responded", T0 + timedelta(days=10), kind="nps", score=5, band=band)
            )
        return d.simulate(d.DEFAULT_JOURNEY, [*evs, *extra])

    def test_promoter_is_asked_for_a_review_and_invited(self) -> None:
        acts = flat(self.run("promoter"))
        assert acts == [
            ("message", "welcome"),
            ("message", "check_in"),
            ("survey", "nps"),
            ("request_review", None),
            ("invite_referral", None),
            ("request_review", None),  # the one reminder
        ]

    def test_one_review_reminder_a_week_after_the_ask(self) -> None:
        recs = self.run("promoter")
        asks = [
            (r.at, a.params.get("reminder"))
            for r in recs
            for a in r.actions
            if a.type == "request_review"
        ]
        assert [reminder for _, reminder in asks] == [False, True]
        assert asks[1][0] - asks[0][0] == timedelta(days=7)

    def test_a_review_ends_the_wait_for_the_reminder(self) -> None:
        # delivered day 2, asked day 16; reviewed day 18: the reminder request leaves at
        # once, and feedback drops it for an order already reviewed.
        recs = self.run("promoter", extra=[ev("review.submitted", T0 + timedelta(days=18))])
        reminder = next(
            r
            for r in recs
            for a in r.actions
            if a.type == "request_review" and a.params.get("reminder")
        )
        assert reminder.at == T0 + timedelta(days=18)

    def test_passive_gets_review_ask_and_loyalty_nudge(self) -> None:
        acts = flat(self.run("passive"))
        assert ("request_review", None) in acts
        assert ("message", "loyalty_nudge") in acts
        assert ("invite_referral", None) not in acts

    def test_detractor_escalated_and_review_waits_for_resolution(self) -> None:
        recs = self.run(
            "detractor",
            extra=[
                ev("ticket.opened", T0 + timedelta(days=11), ticket_id="k1"),
                ev("ticket.resolved", T0 + timedelta(days=25), ticket_id="k1"),
            ],
        )
        acts = flat(recs)
        assert ("escalate_support", None) in acts
        assert ("invite_referral", None) not in acts
        review = next(r for r in recs if any(a.type == "request_review" for a in r.actions))
        assert review.at == T0 + timedelta(days=25)  # not day 16: after the ticket is resolved

    def test_check_in_falls_back_to_fulfilled_plus_five_days(self) -> None:
        recs = self.run(None, delivered=False)
        check_in = next(
            r for r in recs if any(a.params.get("kind") == "check_in" for a in r.actions)
        )
        assert check_in.at == T0 + timedelta(days=6)

    def test_no_answer_gets_one_reminder_then_review_ask(self) -> None:
        acts = flat(self.run(None))
        assert acts.count(("survey", "nps")) == 2  # the request and one reminder
        assert acts[-1] == ("request_review", None)

    def test_repeat_customer_gets_thank_you(self) -> None:
        recs = d.simulate(d.DEFAULT_JOURNEY, [placed(), placed(T0 + timedelta(hours=1), "o2")])
        assert flat(recs)[:2] == [("message", "welcome"), ("message", "thank_you")]
        exits = [t for r in recs for t in r.transitions if t.kind == "exit"]
        assert exits and exits[0].reason == "superseded by a new order"

    def test_never_surveyed_twice_inside_the_fatigue_window(self) -> None:
        evs = [
            placed(),
            ev("order.delivered", T0 + timedelta(days=1), order_id="o1"),
            placed(T0 + timedelta(days=9), "o2"),
            ev("order.delivered", T0 + timedelta(days=10), order_id="o2"),
        ]
        acts = flat(d.simulate(d.DEFAULT_JOURNEY, evs))
        surveys = [a for a in acts if a == ("survey", "nps")]
        assert len(surveys) == 1  # o1's survey on day 8; o2's (day 17) is inside 30 days

    def test_refund_exits_mid_delay(self) -> None:
        recs = self.run(
            None, extra=[ev("order.refunded", T0 + timedelta(days=3), order_id="o1", full=True)]
        )
        assert flat(recs) == [("message", "welcome")]
        assert any(t.kind == "exit" and t.reason == "refunded" for r in recs for t in r.transitions)

    def test_partial_refund_does_not_exit(self) -> None:
        recs = self.run(
            None, extra=[ev("order.refunded", T0 + timedelta(days=3), order_id="o1", full=False)]
        )
        assert ("request_review", None) in flat(recs)

    def test_open_ticket_before_survey_pauses_then_resumes(self) -> None:
        recs = self.run(
            "promoter",
            extra=[
                ev("ticket.opened", T0 + timedelta(days=6), ticket_id="k"),
                ev("ticket.resolved", T0 + timedelta(days=12), ticket_id="k"),
            ],
        )
        survey = next(r for r in recs if any(a.type == "survey" for a in r.actions))
        assert survey.at == T0 + timedelta(days=12)
        kinds = [t.kind for r in recs for t in r.transitions]
        assert "pause" in kinds and "resume" in kinds

    def test_delivered_before_placed_still_anchors(self) -> None:
        recs = d.simulate(
            d.DEFAULT_JOURNEY,
            [ev("order.delivered", T0 - timedelta(hours=1), order_id="o1"), placed()],
        )
        check_in = next(
            r for r in recs if any(a.params.get("kind") == "check_in" for a in r.actions)
        )
        assert check_in.at == T0 - timedelta(hours=1) + timedelta(days=3)

    def test_refund_before_placed_exits_at_start(self) -> None:
        recs = d.simulate(
            d.DEFAULT_JOURNEY,
            [ev("order.refunded", T0 - timedelta(hours=1), order_id="o1", full=True), placed()],
        )
        assert flat(recs) == []

    def test_goal_is_a_repeat_order_within_the_window(self) -> None:
        st_ = d.InstanceState(id="i", journey="default", version=1, order_id="o1", started_at=T0)
        assert d.goal_reached(
            d.DEFAULT_JOURNEY,
            st_,
            d.Occurrence("e", d.PLACED, T0 + timedelta(days=3), {"order_id": "o2"}),
        )
        assert not d.goal_reached(
            d.DEFAULT_JOURNEY,
            st_,
            d.Occurrence("e", d.PLACED, T0 + timedelta(days=31), {"order_id": "o2"}),
        )
        assert not d.goal_reached(
            d.DEFAULT_JOURNEY, st_, d.Occurrence("e", d.PLACED, T0, {"order_id": "o1"})
        )


class TestConditionsAndTime:
    def test_send_at_time_of_day_in_customer_zone(self) -> None:
        j = d.parse_journey(
            {
                "name": "x",
                "stages": [
                    {
                        "name": "a",
                        "wait": {"delay": "P1D", "at": "10:00"},
                        "actions": [{"type": "message", "kind": "custom"}],
                    }
                ],
            }
        )
        prof = d.Profile(timezone="America/New_York")
        stt = d.InstanceState(id="i", journey="x", version=1, started_at=T0, waiting_since=T0)
        due = d.stage_due(j, j.stages[0], stt, prof)
        assert due is not None
        assert due.astimezone(ZoneInfo("America/New_York")).time() == time(10, 0)
        assert due >= T0 + timedelta(days=1)

    def test_conditions_are_rechecked_before_each_action(self) -> None:
        j = d.parse_journey(
            {
                "name": "x",
                "stages": [
                    {
                        "name": "a",
                        "wait": "PT1H",
                        "actions": [
                            {"type": "message", "kind": "custom", "when": {"open_ticket": False}}
                        ],
                    }
                ],
            }
        )
        recs = d.simulate(
            j, [placed(), ev("ticket.opened", T0 + timedelta(minutes=10), ticket_id="k")]
        )
        # Paused while the ticket is open; the message never goes while the ticket is open.
        assert flat(recs) == []

    def test_spend_above(self) -> None:
        cond = d.Condition(spend_above=d.MoneyThreshold(amount=10000, currency="USD"))
        stt = d.InstanceState(id="i", journey="x", version=1, started_at=T0)
        assert d.holds(cond, d.Profile(total_spent=20000, currency="USD"), stt, T0)
        assert not d.holds(cond, d.Profile(total_spent=20000, currency="EUR"), stt, T0)

    @settings(max_examples=60, deadline=None)
    @given(
        st.lists(st.integers(min_value=0, max_value=60 * 24 * 30), min_size=1, max_size=6),
        st.permutations(["order.fulfilled", "order.delivered", "survey.responded"]),
    )
    def test_timers_never_in_the_past_of_their_anchor_and_no_duplicate_actions(
        self, offsets: list[int], order: list[str]
    ) -> None:
        # Whatever the arrival order and spacing, the engine never repeats a step and
        # every due timer fires at or after the moment its state was created.
        evs = [placed()]
        for minutes, t in zip(offsets, order, strict=False):
            evs.append(
                ev(
                    t,
                    T0 + timedelta(minutes=minutes),
                    order_id="o1",
                    kind="nps",
                    score=9,
                    band="promoter",
                )
            )
        recs = d.simulate(d.DEFAULT_JOURNEY, evs)
        steps = [(r.instance_id, a.step) for r in recs for a in r.actions]
        assert len(steps) == len(set(steps))
        times = [r.at for r in recs]
        assert times == sorted(times)

    @settings(max_examples=40, deadline=None)
    @given(st.integers(min_value=0, max_value=30 * 24), st.integers(min_value=0, max_value=30 * 24))
    def test_delivery_anchor_wins_over_fallback_whatever_the_order(
        self, f_h: int, d_h: int
    ) -> None:
        a = [
            placed(),
            ev("order.fulfilled", T0 + timedelta(hours=f_h), order_id="o1"),
            ev("order.delivered", T0 + timedelta(hours=d_h), order_id="o1"),
        ]
        recs = d.simulate(d.DEFAULT_JOURNEY, a)
        check_in = next(
            r for r in recs if any(x.params.get("kind") == "check_in" for x in r.actions)
        )
        fallback = T0 + timedelta(hours=f_h, days=5)
        primary = T0 + timedelta(hours=d_h, days=3)
        # The fallback only fires if the delivery has not been reported by then.
        delivered_at = T0 + timedelta(hours=d_h)
        expected = fallback if fallback <= delivered_at else primary
        assert check_in.at == expected


class TestHistoricalOrders:
    """A past order (history import, late live delivery) is counted, never acted on."""

    def occ(self, n: int, type_: str = d.PLACED, **data: object) -> d.Occurrence:
        base = {"order_id": f"o{n}", "total": {"amount": 5000, "currency": "USD"}}
        return d.Occurrence(f"e{n}", type_, T0 - timedelta(days=700), {**base, **data})

    def handle(self, occ: d.Occurrence, instances: list[d.InstanceState] | None = None):
        j = d.DEFAULT_JOURNEY
        return d.handle_event({(j.name, 1): j}, {j.name: 1}, instances or [], d.Profile(), occ, T0)

    def test_an_imported_order_counts_and_starts_nothing(self):
        out = self.handle(self.occ(1, historical=True, origin="import"))
        assert out.results == [] and out.started == []
        assert out.profile.orders_count == 1 and out.profile.total_spent == 5000

    def test_a_late_order_leaves_a_skipped_record_that_says_why(self):
        why = "order placed 700 days before it arrived (the tenant's limit is 30 days)"
        out = self.handle(self.occ(1, historical=True, origin="late", historical_reason=why))
        (res,) = out.results
        assert out.started == []
        assert res.state.status == "skipped" and res.actions == []
        assert d.timers_for(d.DEFAULT_JOURNEY, res.state, out.profile) == []
        (t,) = res.transitions
        assert t.kind == "skip" and why in t.reason and t.cause == "e1"

    def test_a_historical_order_does_not_restart_a_running_journey(self):
        live = self.handle(d.Occurrence("e9", d.PLACED, T0, {"order_id": "o9"}))
        running = live.results[0].state
        assert running.status == "running"
        out = self.handle(self.occ(1, historical=True, origin="import"), [running])
        assert [r.state.status for r in out.results] == ["running"]
        assert all(t.kind != "exit" for r in out.results for t in r.transitions)

    def test_a_partial_refund_continues_and_a_full_one_exits(self):
        live = self.handle(d.Occurrence("e1", d.PLACED, T0, {"order_id": "o1"}))
        running = live.results[0].state
        partial = self.handle(
            d.Occurrence("r1", d.REFUNDED, T0, {"order_id": "o1", "full": False}), [running]
        )
        assert partial.results[0].state.status == "running"
        assert [t.kind for t in partial.results[0].transitions] == ["deferred"]
        full = self.handle(
            d.Occurrence("r2", d.REFUNDED, T0, {"order_id": "o1", "full": True}), [running]
        )
        assert full.results[0].state.status == "exited"
