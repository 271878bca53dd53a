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
