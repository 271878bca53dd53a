"""``make demo``: one shop, five customers, every service, in about a minute.

The scenario lives here once and the end-to-end test (tests/e2e) imports it: a demo
tenant is registered through orders-ingest's admin API, a local receiver stands in for
the merchant's ESP (it verifies the Standard Webhooks signature and prints every message
a customer would get), signed Shopify webhooks are posted for a promoter, a passive, a
detractor whose recovery ticket is opened and resolved, a friend referred by the
promoter and a customer whose order is refunded (she then unsubscribes from the shop's
win-back email, and its next one is suppressed); surveys are answered through the survey
page as a browser would. Days become seconds through the tenant's own journey definition
(a compressed copy of the default journey): no special code path anywhere.

With services up on the default ports (``make dev``) it uses them; otherwise it starts
the stack and every service itself and stops them at the end.

The package: ``config`` (ports, fast settings), ``compress`` (days to seconds),
``esp`` (the ESP stand-in), ``client`` (the tenant's calls), ``story`` (the scenario and
its summary), ``__main__`` (``make demo``).
"""

from afterglow.devstack.demo.client import Customer, DemoClient, ScenarioError, b64hmac, now_iso
from afterglow.devstack.demo.compress import SECONDS_PER_DAY, compress_journey
from afterglow.devstack.demo.config import (
    CONSOLE_PORT,
    DEMO_ADMIN_TOKEN,
    DEV_PORTS,
    FAST_ENV,
    SERVICES,
)
from afterglow.devstack.demo.esp import Received, Receiver
from afterglow.devstack.demo.story import (
    Scenario,
    email_through_catcher,
    instance,
    print_summary,
)

__all__ = [
    "CONSOLE_PORT",
    "DEMO_ADMIN_TOKEN",
    "DEV_PORTS",
    "FAST_ENV",
    "SECONDS_PER_DAY",
    "SERVICES",
    "Customer",
    "DemoClient",
    "Received",
    "Receiver",
    "Scenario",
    "ScenarioError",
    "b64hmac",
    "compress_journey",
    "email_through_catcher",
    "instance",
    "now_iso",
    "print_summary",
]
