"""Ingest's background loops (CONVENTIONS item 2: every service's ``WORKERS``)."""

from __future__ import annotations

from afterglow.ingest import bigcommerce, escalations, processing
from afterglow.ingest.discounts.worker import discount_worker
from afterglow.ingest.reconcile import reconciliation_worker
from afterglow.kit.app import Worker

WORKERS: tuple[Worker, ...] = (
    reconciliation_worker,  # pull missed orders from each platform
    bigcommerce.fetch_worker,  # BigCommerce hooks carry ids only: fetch the order
    processing.processing_worker,  # stored deliveries -> order book and events
    discount_worker,  # reward codes created in the shop
    escalations.escalation_worker,  # detractors' tickets opened in the helpdesk
)
