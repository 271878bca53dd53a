from __future__ import annotations

from afterglow.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Journey and messaging settings (env: JOURNEYS_*, MESSAGING_*)."""
