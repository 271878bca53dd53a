"""Pure parts of the console: charts, the timeline, settings."""

from __future__ import annotations

from datetime import date

from afterglow.console import charts
from afterglow.console.pages import _period, timeline
from afterglow.console.settings import ConsoleSettings


class TestCharts:
    def test_labels_from_tenants_data_are_escaped(self):
        svg = charts.bars("x", "Orders <b>", [("<script>", 3)], "orders")
        assert "<script>" not in svg and "&lt;script&gt;" in svg
        assert "&lt;b&gt;" in svg

    def test_a_chart_is_an_image_with_a_title_and_description(self):
        svg = charts.bars("orders", "Orders per day", [("01-05", 1), ("01-20", 2)], "orders")
        assert 'role="img"' in svg and 'aria-labelledby="orders-t orders-d"' in svg
        assert svg.count("<rect") == 2

    def test_a_week_without_answers_is_a_gap_not_a_zero(self):
        svg = charts.line("nps", "NPS", [("a", 10.0), ("b", 20.0), ("c", None), ("d", 5.0)], "")
        # a..b is a line; d stands alone (a dot, no line through c)
        assert svg.count("<polyline") == 1
        assert svg.count("<circle") == 3

    def test_cohort_cells_show_the_share_still_buying(self):
        svg = charts.cohort_grid("c", "Retention", [("2026-01", 2, [2, 1, 0])])
        assert ">100%<" in svg and ">50%<" in svg and ">0%<" in svg


class TestTimeline:
    def test_rows_are_dated_newest_first_and_messages_carry_their_decisions(self):
        records = {
            "ingest": {"orders": [{"order_id": "o1", "placed_at": "2026-01-05T09:00:00Z"}]},
            "journeys": {
                "messages": [{"id": 7, "kind": "review_request", "created_at": "2026-02-01"}],
                "message_decisions": [{"message_id": 7, "decision": "suppressed"}],
                "customer_profiles": [{"customer_id": "a"}],  # no date: not an event
            },
        }
        entries = timeline(records)
        assert [e["what"] for e in entries] == ["messages", "orders"]
        assert entries[0]["decisions"] == [{"message_id": 7, "decision": "suppressed"}]


class TestPeriod:
    def test_defaults_to_the_last_ninety_days_and_orders_a_reversed_one(self):
        today = date(2026, 3, 31)
        assert _period(None, None, today) == (date(2026, 1, 1), today)
        assert _period(today, date(2026, 1, 1), today) == (date(2026, 1, 1), today)


class TestSettings:
    def test_cookies_are_secure_whenever_served_over_https(self):
        assert ConsoleSettings(public_base_url="https://console.example.com").secure_cookies
        assert not ConsoleSettings(public_base_url="http://127.0.0.1:8006").secure_cookies

    def test_service_urls_name_the_callees_only(self):
        s = ConsoleSettings(service_urls="ingest=http://h:1/,console=http://h:6")
        assert s.urls()["ingest"] == "http://h:1"
        assert "console" not in s.urls()
        assert s.urls()["feedback"] == "http://127.0.0.1:8003"


class TestJourneySteps:
    def test_waits_and_conditions_read_as_words(self):
        from afterglow.console.journeys_pages import compact, steps

        definition = {
            "stages": [
                {
                    "name": "check_in",
                    "wait": {
                        "delay": "P3D",
                        "after": "afterglow.order.delivered.v1",
                        "at": None,
                        "fallback": {"delay": "P5D", "after": "afterglow.order.fulfilled.v1"},
                    },
                    "when": {"open_ticket": False, "tier": None},
                    "actions": [{"type": "message", "kind": "check_in"}],
                }
            ]
        }
        [step] = steps(definition)
        assert step["wait"] == "P3D after order.delivered, else P5D after order.fulfilled"
        assert step["when"] == "open ticket False"
        assert step["actions"] == ["message check_in"]
        assert "at" not in compact(definition)["stages"][0]["wait"]


class TestYamlLines:
    def test_a_field_path_is_found_at_its_line(self):
        from afterglow.console.yaml_lines import error_line, line_of

        text = "name: x\nstages:\n  - name: a\n    wait:\n      delay: soon\n"
        assert line_of(text, "stages[0].wait.delay") == 5
        assert line_of(text, "stages[0].wait.delay.deeper") == 5  # the deepest that exists
        assert line_of(text, "stages[3]") == 2  # no fourth stage: the stages key
        assert line_of(text, "nothing") is None
        assert error_line("a: [1,\n") is not None and error_line(text) is None
