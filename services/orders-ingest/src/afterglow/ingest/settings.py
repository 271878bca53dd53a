"""Settings of orders-ingest (environment variables, prefixed ``INGEST_``)."""

from __future__ import annotations

from afterglow.kit.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    # Guards /admin routes. Empty disables the admin API (every call answers 401).
    ingest_admin_token: str = ""
    # Shopify, WooCommerce and every Standard Webhooks sender stay well under this.
    ingest_max_body_bytes: int = 1024 * 1024
    # Standard Webhooks and Zendesk timestamps older or newer than this are refused.
    ingest_timestamp_tolerance_s: int = 300
    # How long the previous webhook secret stays valid after a rotation (Shopify takes
    # up to an hour to apply a rotated secret).
    ingest_rotation_grace_s: int = 3600
    # Reconciliation: how often each tenant's platform API is polled, and how far the
    # watermark is moved back to cover clock skew between us and the platform.
    ingest_reconcile_interval_s: float = 300.0
    ingest_reconcile_overlap_s: float = 60.0
    ingest_reconcile_page_size: int = 50
    # BigCommerce's deferred fetch: how often the worker looks for due deliveries, how
    # many it fetches at once, the deadline of one fetch (the order and its products),
    # and the retries: attempt n waits base * 2**(n-1) seconds, capped; 30 attempts with
    # 30 s .. 1 h cover about a day of store API outage before a delivery is failed.
    ingest_fetch_poll_interval_s: float = 1.0
    ingest_fetch_batch: int = 8
    ingest_fetch_timeout_s: float = 30.0
    ingest_fetch_max_attempts: int = 30
    ingest_fetch_retry_base_s: float = 30.0
    ingest_fetch_retry_max_s: float = 3600.0
    # The webhook hot path (group_commit): requests admitted at once (waiting for
    # their body, signature or commit); past it a webhook is answered 503 with
    # Retry-After (seconds). At 1,000/s a commit round takes a few ms, so a few dozen
    # wait at a time; 500 bounds the wait near half a second at full load.
    ingest_intake_max_waiting: int = 500
    ingest_intake_retry_after_s: int = 1
    # Deliveries per group commit, and writer tasks (one gathers while one commits:
    # they hold one pooled connection each, whatever the request rate).
    ingest_intake_max_batch: int = 500
    ingest_intake_writers: int = 2
    # How long tenants and webhook secrets are cached by a receiving process.
    ingest_directory_ttl_s: float = 2.0
    # The processing worker: deliveries per transaction, and its poll (backstop of
    # the in-process wake-up, for deliveries another process stored).
    ingest_process_batch: int = 200
    # Deliveries per transaction while this process's webhook requests wait or keep
    # arriving (a burst): short rounds, so the senders' answers keep most of the CPU.
    # Chosen when a delivery cost 5-10 ms here (1,000/s offered: rounds of 20 put p99
    # near 100-200 ms, of 5 near 20-45). Applied in sets, one costs about 1 ms, and
    # rounds of 5 became the cap of a steady load: at 200 orders/s offered the stack
    # delivered 63/s end to end, deliveries waiting 15 s to be processed (bench/system);
    # 25 kept up, and at 1,000/s p99 stayed within the noise of 5 (51 and 26 ms against
    # 72 and 802 ms, alternated on a loaded machine).
    ingest_process_busy_batch: int = 25
    ingest_process_poll_s: float = 1.0
    # After a wake-up, how long the worker waits for more deliveries before its round
    # (a steady trickle then makes one round of several instead of one round each).
    # A round's statements and its relay's cost the same for one delivery as for ten:
    # at 50 orders/s, 0.05 s made rounds of ~2 and cost ingest 4.2-4.9 ms of CPU per
    # order, 0.2 s 3.4-3.7 (PostgreSQL 2.8-3.4 -> 2.6), welcome p99 within the noise
    # (1.07-1.31 s and 0.87-1.03 s, alternated on a loaded machine, bench/system).
    ingest_process_linger_s: float = 0.2
    # How long a round may wait while this process's webhook requests wait for their
    # commit (answers first in a burst; 0 disables).
    ingest_process_defer_s: float = 0.5
    # Reward codes in shops (discounts/): how often the worker looks for due platform
    # calls, how many it takes at once, the deadline of one call (a lost answer is then
    # retried, and the retry looks the code up before creating), and the retries: attempt
    # n waits base * 2**(n-1) s, capped; 12 attempts from 5 s to 15 min span about 1.5 h
    # of shop API outage before a code fails and its issuer is told (discount.failed).
    ingest_discount_poll_s: float = 1.0
    ingest_discount_batch: int = 16
    ingest_discount_timeout_s: float = 15.0
    ingest_discount_max_attempts: int = 12
    ingest_discount_retry_base_s: float = 5.0
    ingest_discount_retry_max_s: float = 900.0
    # Escalations to the tenant's helpdesk (afterglow.ingest.escalations): how often
    # the worker looks for due ones, how many it sends at once, the deadline of one
    # call, and the retries (attempt n waits base * 2**(n-1) s, capped): 12 attempts
    # from 10 s to 30 min cover about two hours of helpdesk outage.
    ingest_helpdesk_poll_s: float = 1.0
    ingest_helpdesk_batch: int = 16
    ingest_helpdesk_timeout_s: float = 10.0
    ingest_helpdesk_max_attempts: int = 12
    ingest_helpdesk_retry_base_s: float = 10.0
    ingest_helpdesk_retry_max_s: float = 1800.0
