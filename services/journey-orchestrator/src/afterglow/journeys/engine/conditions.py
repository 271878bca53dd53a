"""Conditions: whether a stage, action, branch or trigger filter holds for a customer and
an instance at a moment."""

from __future__ import annotations

from datetime import datetime

from afterglow.journeys.engine.definition import Condition
from afterglow.journeys.engine.profile import Profile
from afterglow.journeys.engine.state import InstanceState


def holds(cond: Condition | None, profile: Profile, st: InstanceState, now: datetime) -> bool:
    if cond is None:
        return True
    # An order's instance carries its trigger's decision; loyalty decides with the same
    # rule on the same field, so the welcome and the first-order bonus agree. Without
    # one (a journey started by a ticket), the profile's count decides.
    first = st.first_order if st.first_order is not None else profile.orders_count <= 1
    if cond.first_order is not None and cond.first_order != first:
        return False
    if cond.repeat_order is not None and cond.repeat_order == first:
        return False
    if cond.open_ticket is not None and cond.open_ticket != bool(profile.open_tickets):
        return False
    if cond.nps_band is not None:
        band = st.band or "none"
        if band not in cond.nps_band:
            return False
    if (
        cond.spend_above is not None
        and profile.spent_in(cond.spend_above.currency) <= cond.spend_above.amount
    ):
        return False
    if cond.tier is not None and profile.tier not in cond.tier:
        return False
    recent = profile.last_surveyed_at is not None and (
        cond.surveyed_within is not None and profile.last_surveyed_at >= now - cond.surveyed_within
    )
    if cond.surveyed_within is not None and not recent:
        return False
    if cond.not_surveyed_within is not None and (
        profile.last_surveyed_at is not None
        and profile.last_surveyed_at >= now - cond.not_surveyed_within
    ):
        return False
    return not (cond.consent is not None and cond.consent != profile.consent)


# id(condition) -> (condition, its text). A definition's conditions never change (frozen
# models, definitions cached per version), and every split a journey runs describes the
# branch it took: a model_dump per step was ~2% of the engine consumer's Python. The
# condition is kept in the value so that its id cannot be reused while cached.
_DESCRIBED: dict[int, tuple[Condition, str]] = {}


def describe(cond: Condition | None) -> str:
    if cond is None:
        return "always"
    hit = _DESCRIBED.get(id(cond))
    if hit is not None and hit[0] is cond:
        return hit[1]
    text = ", ".join(f"{k}={v}" for k, v in cond.model_dump(exclude_none=True, mode="json").items())
    if len(_DESCRIBED) > 10_000:
        _DESCRIBED.clear()
    _DESCRIBED[id(cond)] = (cond, text)
    return text
