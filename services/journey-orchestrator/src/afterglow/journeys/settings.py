from __future__ import annotations

from pydantic import Field

from afterglow.journeys.messaging.settings import MessagingSettings
from afterglow.kit.settings import ServiceSettings


class Settings(ServiceSettings):
    """Journey and messaging settings (env: JOURNEYS_*, MESSAGING_*)."""

    # Records per poll. aiokafka fills a poll from one partition's fetched records
    # before the next partition's, so a poll of 500 out of a backlog held one or two of
    # the orders topic's 12 partitions: their transactions ran one or two at a time and
    # the engine waited on PostgreSQL between them. A poll of 4,000 spans most
    # partitions, and consumer_parallel_partitions of them are applied at once (one
    # computes while another's statement runs). A transaction still holds one
    # partition's share of the poll, at most one fetch of it (max_partition_fetch_bytes;
    # 768 records at most in the bench's polls). order.placed from a 15,000-event
    # backlog: 2,784-3,060/s at 500, 3,201-3,660/s at 4,000 (bench/journeys, three
    # runs each).
    consumer_max_records: int = Field(default=4_000, ge=1, le=10_000)

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
