"""Feedback's background loops (CONVENTIONS item 2: every service's ``WORKERS``)."""

from __future__ import annotations

from afterglow.feedback import support
from afterglow.kit.app import Worker

WORKERS: tuple[Worker, ...] = (
    support.csat_worker,  # CSAT surveys 24 h after a ticket is solved
)
