"""Journey metrics over a period, per journey and version: the stage funnel, goal
conversion and the revenue of goal orders (the console's dashboard reads them).

Definitions:

- the instances counted are those *started* in the period (whole UTC days, see
  :mod:`afterglow.kit.period`), skipped ones left out (they run no stage); the funnel,
  the conversions and the revenue all follow that same set of instances, so a version's
  conversion rate is ``converted / started`` and each stage's share is of ``started``
  (counting stage entries by when they happened instead would mix instances started
  before the period into a later stage and give shares above 100%);
- a stage's figure: instances of the version that entered it (a split's branches each
  count once per instance);
- revenue of goal orders: the totals of the orders that converted those instances, per
  currency (never added across currencies); a goal that is not an order, or a
  conversion recorded before migration 0008, counts as a conversion without revenue.

One statement per figure, each a GROUP BY in PostgreSQL; nothing loops per row
(:func:`.views_store.metrics_rows`); :func:`assemble` puts their rows together
(:meth:`.service.JourneyService.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StageCount(BaseModel):
    stage: str
    instances: int
    share_of_started: float | None


class Money(BaseModel):
    currency: str
    amount: int
    orders: int


class VersionMetrics(BaseModel):
    journey: str
    version: int
    started: int
    converted: int
    conversion_rate: float | None
    goal_revenue: list[Money]
    stages: list[StageCount]


class JourneyMetrics(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from": "2026-01-01",
                    "to": "2026-03-31",
                    "versions": [
                        {
                            "journey": "default",
                            "version": 2,
                            "started": 120,
                            "converted": 18,
                            "conversion_rate": 0.15,
                            "goal_revenue": [{"currency": "USD", "amount": 162000, "orders": 18}],
                            "stages": [
                                {"stage": "onboarding", "instances": 120, "share_of_started": 1.0},
                                {"stage": "check_in", "instances": 96, "share_of_started": 0.8},
                            ],
                        }
                    ],
                }
            ]
        },
        populate_by_name=True,
    )
    from_: date = Field(alias="from")
    to: date
    versions: list[VersionMetrics]


def assemble(
    outcomes: Sequence[Any],
    funnel: Sequence[Any],
    revenue: Sequence[Any],
    written: dict[tuple[str, int], list[str]],
) -> list[VersionMetrics]:
    """The rows of the statements into one entry per journey version. Pure, so the
    ordering and the shares are checked without a database."""
    entered: dict[tuple[str, int], dict[str, int]] = {}
    for r in funnel:
        entered.setdefault((r.journey, int(r.version)), {})[r.stage] = int(r.instances)
    money: dict[tuple[str, int], list[Money]] = {}
    for r in revenue:
        money.setdefault((r.journey, int(r.version)), []).append(
            Money(currency=r.currency, amount=int(r.amount), orders=int(r.orders))
        )
    out = []
    for r in outcomes:
        key = (r.journey, int(r.version))
        started, converted = int(r.started), int(r.converted)
        counts = entered.get(key, {})
        # Written order first; a stage no longer in the definition (renamed) after it.
        names = list(written.get(key, []))
        names += sorted(s for s in counts if s not in names)
        out.append(
            VersionMetrics(
                journey=key[0],
                version=key[1],
                started=started,
                converted=converted,
                conversion_rate=round(converted / started, 4) if started else None,
                goal_revenue=money.get(key, []),
                stages=[
                    StageCount(
                        stage=name,
                        instances=counts.get(name, 0),
                        share_of_started=round(counts.get(name, 0) / started, 4)
                        if started
                        else None,
                    )
                    for name in names
                ],
            )
        )
    return out
