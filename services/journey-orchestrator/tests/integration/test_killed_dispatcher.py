"""The journeys service as a real process, killed with SIGKILL after a real SMTP server
took a message's DATA and before the dispatcher could record the send: the message is
sent again after its lease, with the same ``Message-ID`` (so the receiving side can
recognise the repeat), and ends ``sent``.

Its own pytest process (``afterglow.devstack.suite.ISOLATED``): the suite's in-process
orchestrator app (this service's tests/conftest.py ``orch``) runs a dispatcher of its
own on the same tables, which would take the killed process's leased message and hide
what this checks.
Time is the real clock here, so the tenant's quiet hours are switched off.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from afterglow.devstack.pytest_plugin import new_id
from afterglow.devstack.services import KillableService, killable_services
from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events.catalog import CustomerInfo, Money, OrderPlaced
from afterglow.events.testing import eventually
from afterglow.journeys.models import api_keys
from afterglow.kit.auth import ApiKeyStore
from afterglow.kit.db import create_engine, create_sessionmaker

from .test_channels import FROM, SMTP_USER, Mailbox

pytestmark = pytest.mark.slow

# Short enough that the restarted process retries the killed send within seconds: the
# lease of a claimed message is the request timeout plus the margin.
JOURNEYS_ENV = {
    "LOG_LEVEL": "WARNING",
    "MESSAGING_POLL_INTERVAL_S": "0.1",
    "MESSAGING_REQUEST_TIMEOUT_S": "3",
    "MESSAGING_LEASE_MARGIN_S": "1",
}


class KillingMailbox(Mailbox):
    """The test's SMTP server, which, once ``arm``ed, takes the next DATA, keeps it, and
    SIGKILLs the journeys process before answering: the message reached the server,
    the dispatcher never learns it. Later DATA is accepted as usual."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: KillableService | None = None
        self.killed = threading.Event()
        self.killed_data: bytes | None = None

    def arm(self, victim: KillableService) -> None:
        self.victim = victim

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        answer = await super().handle_DATA(server, session, envelope)  # stores it
        if self.victim is not None:
            victim, self.victim = self.victim, None
            self.killed_data = envelope.original_content
            victim.kill()  # blocks this server's loop for the wait: nothing else to do
            self.killed.set()
        return answer


@pytest.fixture
def smtp() -> Iterator[KillingMailbox]:
    box = KillingMailbox()
    box.controller.start()
    yield box
    box.controller.stop()


@pytest.fixture
def journeys(stack: Stack, tmp_path: Path) -> Iterator[Callable[[], KillableService]]:
    with killable_services(stack, tmp_path) as start:
        yield lambda: start("journeys", JOURNEYS_ENV)


@pytest.fixture
async def publish(stack: Stack) -> AsyncIterator[Callable[..., Any]]:
    producer = build_producer(
        KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
    )
    await producer.start()

    async def send(data: Any, tenant: str, customer: str) -> None:
        event = CloudEvent.new(data, tenant_id=tenant, subject=customer, source="tests")
        rec = to_record(event)
        await producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=rec.headers)

    try:
        yield send
    finally:
        await producer.stop()


async def api_key(stack: Stack, tenant: str) -> dict[str, str]:
    engine = create_engine(stack.database_url, application_name="killed-dispatcher-test")
    try:
        async with create_sessionmaker(engine).begin() as session:
            key = await ApiKeyStore(api_keys).create(
                session, tenant, ["messages:read", "messages:write"]
            )
    finally:
        await engine.dispose()
    return {"authorization": f"Bearer {key}"}


async def mailing_tenant(
    client: httpx.AsyncClient, auth: dict[str, str], tenant: str, smtp: Mailbox
) -> None:
    # Start equal to end: an empty window, quiet hours off (the real clock may be at
    # night, and quiet hours hold transactional messages too).
    policy = {"shop_name": "Lumen", "quiet_hours_start": "00:00", "quiet_hours_end": "00:00"}
    r = await client.put("/v1/messaging/settings", json=policy, headers=auth)
    assert r.status_code == 200, r.text
    password = new_id("pw")
    smtp.passwords[f"{SMTP_USER}-{tenant}"] = password
    channel = {
        "provider": "smtp",
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "none",
        "username": f"{SMTP_USER}-{tenant}",
        "password": password,
        "from_email": FROM,
    }
    r = await client.put("/v1/messaging/channels/email", json=channel, headers=auth)
    assert r.status_code == 200, r.text


async def messages(
    client: httpx.AsyncClient, auth: dict[str, str], customer: str
) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/customers/{customer}/messages", headers=auth)
    assert r.status_code == 200, r.text
    return list(r.json()["messages"])


def message_ids(smtp: Mailbox, to: str) -> list[str]:
    return [str(m["Message-ID"]) for m in smtp.to(to)]


async def test_a_send_killed_after_the_server_took_it_is_retried_with_the_same_message_id(
    stack, smtp, journeys, publish, tenant_id
):
    first = journeys()
    await first.ready()
    auth = await api_key(stack, tenant_id)
    customer, to = "c-killed", f"c-killed-{tenant_id}@example.com"
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        await mailing_tenant(client, auth, tenant_id, smtp)
        order = OrderPlaced(
            order_id=new_id("o"),
            platform="api",
            placed_at=datetime.now(UTC),
            customer=CustomerInfo(email=to, first_name="Jo", timezone="UTC"),
            total=Money(amount=1000, currency="EUR"),
        )
        await publish(order, tenant_id, customer)
        # The order makes the contact and its journey's own welcome; that one is sent
        # and recorded before the kill is armed, so the killed send is the test's.
        await eventually(
            lambda: messages(client, auth, customer),
            lambda ms: bool(ms) and {m["status"] for m in ms} == {"sent"},
            timeout=60,
        )
        smtp.arm(first)
        request_id = new_id("req")
        r = await client.post(
            "/v1/messages",
            json={
                "customer_id": customer,
                "request_id": request_id,
                "kind": "thank_you",
                "category": "transactional",
            },
            headers=auth,
        )
        assert r.status_code == 202, r.text
    assert await asyncio.to_thread(smtp.killed.wait, 60), "the message never reached SMTP"
    assert smtp.killed_data is not None

    second = journeys()
    await second.ready()
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
        logged = await eventually(
            lambda: messages(client, auth, customer),
            lambda ms: [m["status"] for m in ms if m["request_id"] == request_id] == ["sent"],
            timeout=60,
        )
    [mine] = [m for m in logged if m["request_id"] == request_id]
    header = f"<{mine['id']}@lumen.test>"
    killed = email.message_from_bytes(smtp.killed_data, policy=email.policy.default)
    assert killed["Message-ID"] == header  # the interrupted send was the test's message
    sent = Counter(message_ids(smtp, to))
    assert sent[header] == 2  # the killed send and its retry carry the same Message-ID
    assert max(sent.values()) <= 2
    assert mine["attempts"] == 2
