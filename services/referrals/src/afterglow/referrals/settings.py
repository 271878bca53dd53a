"""Referrals settings: service-wide defaults, each prefixed ``referrals_``.

A tenant can override the share base URL, the attribution window and the return window
through ``PUT /v1/settings``; these three are the defaults for tenants that did not.
"""

from __future__ import annotations

from pydantic import Field

from afterglow.kit.settings import ServiceSettings


class ReferralsSettings(ServiceSettings):
    # Every poll in one transaction, its partitions one after another in it (the
    # consumer falls back to a transaction per partition when it fails, and judges
    # failures there). An advocate's code is carried by orders in every partition and
    # an attribution holds its code's row lock to the commit, so the partitions'
    # transactions of a poll queued on the same codes and ran one after another
    # anyway, each paying its own statements: order.placed at 1,563-1,645/s with a
    # third of its statements' time waiting on that lock, 2,207-2,873/s as one.
    consumer_coalesce_records: int = Field(default=10_000, ge=0, le=10_000)
    # Where a share link points when the tenant has not set its own shop URL; the code
    # travels as ``?ref=CODE``, the landing-site parameter ingest normalizes. Unset: this
    # service's own link, PUBLIC_BASE_URL/r/{tenant}, which sends the friend on to the
    # shop (below).
    referrals_share_base_url: str | None = None
    # The shop that link sends a friend to when the tenant set no share URL of its own
    # (one shop per deployment). Unset: the link shows the code to use at checkout.
    referrals_shop_url: str | None = None
    referrals_code_length: int = 7
    # Friendbuy's default: an order counts for 90 days after the invitation. A tenant's
    # attribution_window_days overrides it.
    referrals_attribution_days: int = 90
    # The advocate's reward waits until the referee can no longer return the order. A
    # tenant's return_window_days overrides it (shops' return policies differ).
    referrals_return_window_days: int = 30
    referrals_advocate_cap: int = 10
    referrals_advocate_cap_days: int = 30
    # More than this many conversions from one code within the window: held for review.
    referrals_velocity_limit: int = 3
    referrals_velocity_window_minutes: int = 60
    # How often the confirmation worker looks for conversions whose return window ended.
    referrals_confirm_interval_s: float = 5.0
    referrals_confirm_batch: int = 200
