"""Where the demo finds the services, and the settings that make seconds-long delays
hold when it starts them itself."""

from __future__ import annotations

SERVICES = ("ingest", "journeys", "feedback", "loyalty", "referrals")
DEV_PORTS = {"ingest": 8001, "journeys": 8002, "feedback": 8003, "loyalty": 8004, "referrals": 8005}
CONSOLE_PORT = 8006
DEMO_ADMIN_TOKEN = "demo-admin-token"  # noqa: S105 - only for the stack the demo starts itself

# Settings that shorten the services' own polling so seconds-long delays are met on
# time. They are ordinary settings (environment), used by the e2e test and the demo when
# it starts the services itself. Business delays (journey waits, return windows) are the
# demo tenant's own settings instead, so the story runs the same on top of `make dev`.
FAST_ENV = {
    "RELAY_POLL_INTERVAL_S": "0.1",
    "JOURNEYS_TIMER_POLL_INTERVAL_S": "0.2",
    "MESSAGING_POLL_INTERVAL_S": "0.2",
    "MESSAGING_CONTACT_RECHECK_S": "1",
    "MESSAGING_ENDPOINT_RECHECK_S": "1",
    "MESSAGING_BACKOFF_BASE_S": "1",
    "LOYALTY_WORKER_INTERVAL_S": "0.5",
    "REFERRALS_CONFIRM_INTERVAL_S": "0.5",
}
