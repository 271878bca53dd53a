from __future__ import annotations

from pydantic import Field

from afterglow.journeys.messaging.settings import MessagingSettings
from afterglow.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Journey and messaging settings (env: JOURNEYS_*, MESSAGING_*)."""

    # How often the timer loop looks for due timers when the last round was not full.
    journeys_timer_poll_interval_s: float = 1.0
    # Timers claimed (and fired) per transaction.
    journeys_timer_batch: int = 200
    # Timer loops side by side in one process, each over its own share of customers
    # (store.Lane): one lane's round computes while another's waits on PostgreSQL.
    # Two gave 1.3x one on the 2-core bench machine; more added nothing there.
    journeys_timer_lanes: int = Field(default=2, ge=1, le=16)

    def required_secrets(self) -> dict[str, str | None]:
        # Messaging reads its settings (MESSAGING_*) on its own; its signing secret is
        # checked with the others at start-up.
        return {
            **super().required_secrets(),
            "MESSAGING_UNSUBSCRIBE_SECRET": MessagingSettings().unsubscribe_secret,
        }
