"""The dashboard's chart shaping (pure): one mark per value, gaps for missing ones."""

from __future__ import annotations

from afterglow.console import charts, dashboard


def marks(svg: str) -> int:
    return svg.count('class="mark"')


class TestNewChartKinds:
    def test_horizontal_bars_have_one_mark_per_point_and_escape_labels(self):
        svg = charts.hbars("f", "Funnel", [("started", 3), ("<hello>", 2), ("thanks", 0)], "x")
        assert marks(svg) == 3
        assert "<hello>" not in svg and "&lt;hello&gt;" in svg

    def test_grouped_bars_draw_no_bar_for_a_missing_value(self):
        svg = charts.grouped_bars(
            "clv",
            "CLV",
            [("2026-01", [185.0, 185.0, None]), ("2026-02", [50.0, None, None])],
            ["3 months", "6 months", "12 months"],
            "USD",
        )
        assert marks(svg) == 3
        assert "12 months" in svg  # the legend names every series


class TestDashboardShaping:
    def test_a_funnel_chart_per_version_with_started_first(self):
        versions = dashboard.journey_charts(
            {
                "versions": [
                    {
                        "journey": "default",
                        "version": 1,
                        "started": 3,
                        "converted": 1,
                        "conversion_rate": 0.3333,
                        "goal_revenue": [],
                        "stages": [
                            {"stage": "a", "instances": 3, "share_of_started": 1.0},
                            {"stage": "b", "instances": 1, "share_of_started": 0.3333},
                        ],
                    }
                ]
            }
        )
        [v] = versions
        assert marks(v["chart"]) == 3 and 'id="funnel-0-t"' in v["chart"]

    def test_cohort_revenue_is_drawn_in_major_units(self):
        figures = dashboard.order_charts(
            {
                "days": [],
                "currency": "USD",
                "cohorts": [
                    {
                        "month": "2026-01-01",
                        "customers": 2,
                        "active": [2, 1],
                        "revenue_per_customer": {"3": 18500, "6": None, "12": None},
                    }
                ],
            }
        )
        assert "185 USD" in str(figures["clv_chart"]) and marks(str(figures["clv_chart"])) == 1

    def test_weeks_for_a_quarter_months_for_a_year(self):
        from datetime import date

        assert dashboard.interval_for(date(2026, 1, 1), date(2026, 3, 31)) == "week"
        assert dashboard.interval_for(date(2025, 1, 1), date(2025, 12, 31)) == "month"
