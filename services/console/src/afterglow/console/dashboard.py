"""The dashboard: every service's metrics over one chosen period, each chart an SVG
drawn on the server (charts.py) with its numbers in a table beside it.

The figures are computed by the services that own the data (their ``/v1/metrics/...``
endpoints, with the signed-in tenant's key); this module only fetches them side by
side and shapes them into charts. A section whose service refuses the key (403) or does
not answer says so in place, and the rest of the page still shows."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from afterglow.console import charts
from afterglow.console.backend import Backend
from afterglow.console.pages import _PAGE, Current, _iso, _period, page, section
from afterglow.kit.app import runtime_of
from afterglow.kit.routing import service_router

router = service_router(tags=["console"], include_in_schema=False)

CLV_MONTHS = ("3", "6", "12")


def interval_for(start: date, end: date) -> str:
    """Weeks up to about half a year, months beyond (a chart of 100 weekly bars is
    unreadable at 390 px)."""
    return "week" if (end - start).days <= 200 else "month"


async def fetch(b: Backend, start: date, end: date, interval: str) -> dict[str, Any]:
    """Every section's data, fetched at once (one slow service does not add up)."""
    days = {"from": start, "to": end}
    span = {"from": _iso(start), "to": _iso(end, end=True)}
    calls = {
        "orders": b.get("ingest", "/v1/metrics/orders", **days),
        "nps": b.get("feedback", "/v1/metrics/nps", interval=interval, **span),
        "csat": b.get("feedback", "/v1/metrics/csat", interval=interval, **span),
        "reviews": b.get("feedback", "/v1/metrics/reviews", interval=interval, **days),
        "journeys": b.get("journeys", "/v1/metrics/journeys", **days),
        "loyalty": b.get("loyalty", "/v1/metrics/points", interval=interval, **days),
        "referrals": b.get("referrals", "/v1/metrics/referrals", **days),
    }
    results = await asyncio.gather(*(section(c) for c in calls.values()))
    return dict(zip(calls, results, strict=True))


def order_charts(m: dict[str, Any]) -> dict[str, Markup | int]:
    major = 100  # minor units per major unit, for the axis (the table shows cents)
    return {
        "orders_chart": charts.bars(
            "orders", "Orders per day", [(d["day"][5:], d["orders"]) for d in m["days"]], "orders"
        ),
        "cohort_chart": charts.cohort_grid(
            "cohorts",
            "Retention by month of first order",
            [(c["month"][:7], c["customers"], c["active"]) for c in m["cohorts"]],
        ),
        "cohort_months": max((len(c["active"]) for c in m["cohorts"]), default=0),
        "clv_chart": charts.grouped_bars(
            "clv",
            "Revenue per customer by cohort",
            [
                (
                    c["month"][:7],
                    [
                        None
                        if c["revenue_per_customer"][k] is None
                        else c["revenue_per_customer"][k] / major
                        for k in CLV_MONTHS
                    ],
                )
                for c in m["cohorts"]
            ],
            [f"{k} months" for k in CLV_MONTHS],
            m.get("currency") or "",
        ),
    }


def survey_chart(name: str, data: dict[str, Any], interval: str) -> Markup:
    return charts.line(
        name,
        f"{name.upper()} per {interval}",
        [(p["start"][5:10], p.get(name)) for p in data["series"]],
        "points" if name == "nps" else "%",
    )


def review_charts(m: dict[str, Any], interval: str) -> dict[str, Markup]:
    return {
        "reviews_chart": charts.bars(
            "reviews",
            f"Reviews per {interval}",
            [(p["start"][5:], p["reviews"]) for p in m["series"]],
            "reviews",
        ),
        "rating_chart": charts.line(
            "rating",
            f"Average rating per {interval}",
            [(p["start"][5:], p["average_rating"]) for p in m["series"]],
            "stars",
        ),
    }


def journey_charts(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One funnel chart per journey version."""
    return [
        {
            **v,
            "chart": charts.hbars(
                f"funnel-{i}",
                f"{v['journey']} v{v['version']}: instances per stage",
                [("started", v["started"])] + [(s["stage"], s["instances"]) for s in v["stages"]],
                "instances",
            ),
        }
        for i, v in enumerate(m["versions"])
    ]


def loyalty_chart(m: dict[str, Any]) -> Markup:
    return charts.bars(
        "points",
        "Points issued, redeemed and expired in the period; outstanding now",
        [
            ("issued", m["issued"]),
            ("redeemed", m["redeemed"]),
            ("expired", m["expired"]),
            ("outstanding", m["outstanding"]),
        ],
        "points",
    )


def referral_chart(m: dict[str, Any]) -> Markup:
    return charts.hbars(
        "rejections",
        "Referrals rejected, by reason",
        [(r["reason"], r["referrals"]) for r in m["rejection_reasons"]],
        "referrals",
    )


@router.get("/dashboard", summary="The dashboard over a period", responses=_PAGE)
async def dashboard(
    request: Request,
    session: Current,
    start: Annotated[date | None, Query(alias="from")] = None,
    end: Annotated[date | None, Query(alias="to")] = None,
) -> HTMLResponse:
    today = runtime_of(request).clock.now().date()
    start, end = _period(start, end, today)
    interval = interval_for(start, end)
    sections = await fetch(session.backend, start, end, interval)
    figures: dict[str, Any] = {}
    if data := sections["orders"]["data"]:
        figures.update(order_charts(data))
    for name in ("nps", "csat"):
        if data := sections[name]["data"]:
            figures[f"{name}_chart"] = survey_chart(name, data, interval)
    if data := sections["reviews"]["data"]:
        figures.update(review_charts(data, interval))
    if data := sections["journeys"]["data"]:
        figures["journey_versions"] = journey_charts(data)
    if data := sections["loyalty"]["data"]:
        figures["loyalty_chart"] = loyalty_chart(data)
    if (data := sections["referrals"]["data"]) and data["rejection_reasons"]:
        figures["referral_chart"] = referral_chart(data)
    return page(
        request,
        "dashboard.html",
        session=session,
        start=start,
        end=end,
        interval=interval,
        **sections,
        **figures,
    )
