from __future__ import annotations

from afterglow.kit.settings import ServiceSettings


class LoyaltySettings(ServiceSettings):
    # How often the background worker looks for due pending points, expiries, notices
    # and tier reviews. Each pass takes at most loyalty_worker_batch accounts.
    loyalty_worker_interval_s: float = 5.0
    loyalty_worker_batch: int = 200
