from __future__ import annotations

from afterglow.kit.settings import ServiceSettings


class LoyaltySettings(ServiceSettings):
    # How often the background worker looks for due pending points, expiries, notices
    # and tier reviews. Each pass takes at most loyalty_worker_batch accounts.
    loyalty_worker_interval_s: float = 5.0
    loyalty_worker_batch: int = 200
    # Redemptions (redemptions.py): concurrent requests share one transaction (group
    # commit). Requests waiting at once (past it: 503 with Retry-After, seconds), the
    # most per transaction, and writer tasks (one gathers while one commits; each holds
    # one pooled connection, whatever the request rate). Off: one transaction per
    # request, as before (bench/loyalty compares both).
    loyalty_redeem_group_commit: bool = True
    loyalty_redeem_max_waiting: int = 1000
    loyalty_redeem_max_batch: int = 200
    loyalty_redeem_writers: int = 2
    loyalty_redeem_retry_after_s: int = 1
