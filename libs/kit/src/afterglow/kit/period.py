"""A reporting period of whole UTC days, as the metric endpoints take it.

``GET /v1/metrics/...?from=2026-01-01&to=2026-03-31``: both days included, ``to`` not
before ``from``, at most :data:`MAX_PERIOD_DAYS` long. One definition, so the console's
period chooser means the same thing to every service (a dashboard whose charts each
cut the period differently would not add up)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import Query

from afterglow.kit import openapi
from afterglow.kit.errors import Unprocessable

MAX_PERIOD_DAYS = 731  # two years and a leap day

# A period's buckets in SQL: ``buckets(bucket)``, every bucket start (UTC) from the one
# holding ``:start`` to the last before ``:end``, for ``:interval`` day, week or month.
# Every bucket is a row, so a bucket with nothing in it is a zero on the chart rather
# than a missing bar.
BUCKETS_CTE = """buckets AS (
    SELECT b AT TIME ZONE 'UTC' AS bucket
    FROM generate_series(
        date_trunc(:interval, CAST(:start AS timestamptz), 'UTC') AT TIME ZONE 'UTC',
        CAST(:end AS timestamptz) AT TIME ZONE 'UTC' - interval '1 microsecond',
        CAST('1 ' || :interval AS interval)
    ) AS b
)"""


def with_buckets(ctes_and_select: str) -> str:
    """A metric query over :data:`BUCKETS_CTE`: ``WITH buckets AS (...), <the rest>``."""
    return f"WITH {BUCKETS_CTE}, {ctes_and_select}"


BAD_PERIOD = openapi.error(
    422,
    "The period is reversed or longer than two years",
    "unprocessable",
    "to is before from",
    field="to",
)


@dataclass(frozen=True)
class Period:
    """Whole UTC days ``first`` .. ``last``, both included."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        """Midnight UTC opening the first day."""
        return datetime.combine(self.first, time(), UTC)

    @property
    def end(self) -> datetime:
        """Midnight UTC after the last day (exclusive)."""
        return datetime.combine(self.last + timedelta(days=1), time(), UTC)

    def params(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end}


def period_of(first: date, last: date) -> Period:
    """The period, or a 422 naming the field at fault."""
    if last < first:
        raise Unprocessable("to is before from", field="to")
    if (last - first).days >= MAX_PERIOD_DAYS:
        raise Unprocessable(f"the period is longer than {MAX_PERIOD_DAYS} days", field="to")
    return Period(first, last)


async def period_query(
    from_: Annotated[date, Query(alias="from", examples=["2026-01-01"])],
    to: Annotated[date, Query(examples=["2026-03-31"])],
) -> Period:
    """A FastAPI dependency: ``from`` and ``to`` (ISO dates, required), validated."""
    return period_of(from_, to)
