from __future__ import annotations

from .referrals_support import producer, service  # noqa: F401 - fixtures
