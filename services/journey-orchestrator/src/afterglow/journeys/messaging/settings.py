"""Messaging settings (env: MESSAGING_*), read once per running app into its deps
(afterglow.journeys.deps)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class MessagingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESSAGING_", extra="ignore", frozen=True)

    # Signs unsubscribe links. Required (the journeys app refuses to start without it):
    # a public default let anyone unsubscribe any customer. A changed secret breaks
    # old links.
    unsubscribe_secret: str = ""
    # Base of unsubscribe links (this service's public URL); default: PUBLIC_BASE_URL.
    public_url: str | None = None
    poll_interval_s: float = 1.0
    # Woken (a message queued, a send ended), the dispatcher waits this long before it
    # claims, so one claim takes what arrived meanwhile instead of one claim (seven
    # statements) per message. Adds at most this much to a message's latency.
    claim_linger_s: float = 0.02
    batch_size: int = 100
    # Sends in flight at once; a hanging endpoint holds one slot, not the dispatcher.
    concurrency: int = 64
    # ... and at most this many for one tenant (per replica), so a tenant whose endpoint
    # hangs cannot take every slot and hold back everyone else's messages. A tenant gets
    # at most this many over its provider's answer time messages a second: a flash sale
    # of 200 orders/s to an ESP answering in 150 ms needs 30. At 8, 50 orders/s on the
    # 2-core bench queued welcomes for seconds (bench/system).
    per_tenant_concurrency: int = 32
    # Standard Webhooks suggests 15-30 s; the lease below covers it.
    request_timeout_s: float = 15.0
    max_attempts: int = 6
    backoff_base_s: float = 10.0
    backoff_max_s: float = 3600.0
    # A Retry-After beyond this is clamped: an endpoint may not park messages for days.
    retry_after_max_s: float = 6 * 3600.0
    # How long a claimed message is leased to one sender before another replica may
    # retry it (a crash mid-send): request timeout plus this margin.
    lease_margin_s: float = 60.0
    # A request may overtake the customer's order event; wait this long for an address.
    contact_wait_s: float = 600.0
    contact_recheck_s: float = 30.0
    # No endpoint configured yet: check again after this long.
    endpoint_recheck_s: float = 60.0
    # ... and give up (suppressed, no_endpoint) after this long.
    endpoint_wait_s: float = 3 * 86400.0
    dlq_send_timeout_s: float = 10.0
    # Where SNS signing certificates and subscription confirmations may be fetched from
    # (a regex prefix of the URL): AWS's own SNS hosts (commercial and China; GovCloud
    # regions have the first form). Tests serve their own.
    sns_url_prefix: str = r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/"
    sns_timeout_s: float = 5.0
