"""Channels on the real stack: the service's own dispatcher delivering through a real
SMTP server (aiosmtpd, in a thread) and a real HTTP server speaking Twilio's Messages
API, and providers' event webhooks signed as SendGrid and Twilio sign them. Time for
policy and retries is the suite's ManualClock; the harness (tenant, receiver, settings)
is test_messaging's."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import html
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import dkim
import httpx
import pytest
import uvicorn
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from afterglow.devstack.mailcatcher import MailCatcher
from afterglow.devstack.pytest_plugin import new_id
from afterglow.events.catalog import CustomerErasureRequested
from afterglow.events.testing import TopicTap, eventually
from afterglow.journeys.deps import deps_of
from afterglow.journeys.messaging.channels.provider_events import twilio_signature
from afterglow.journeys.messaging.models import MessageContact
from afterglow.journeys.messaging.receiver import headers_of, read_body, respond

from .test_messaging import (  # the module's harness, and its fixtures by name
    Tenant,
    clock,
    daytime,
    receiver,
    registered_tenant,
    service,
    statuses,
)

__all__ = ["clock", "receiver", "service"]  # fixtures used by name below

SMTP_USER, FROM = "lumen-shop", "hello@lumen.test"
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "twilio-token-0123456789"
SHOP_PHONE = "+14155550100"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    """A real SMTP server (aiosmtpd) that requires AUTH and answers per recipient as
    planned: ``plans[rcpt]`` lists answers for that recipient's deliveries in turn
    ("451" or "550" at RCPT; "hang": takes the DATA, keeps it, and answers only after
    the client gave up); afterwards it accepts."""

    def __init__(self, **tls: Any) -> None:
        self.passwords: dict[str, str] = {}
        self.plans: dict[str, list[str]] = {}
        self.received: list[dict[str, Any]] = []
        self.port = free_port()
        self.controller = Controller(
            self,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self.authenticate,
            auth_required=True,
            # aiosmtpd counts only STARTTLS as TLS for AUTH; implicit TLS is TLS too.
            auth_require_tls="tls_context" in tls,
            **tls,
        )

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (
            self.passwords.get(auth_data.login.decode()) == auth_data.password.decode()
        )
        return AuthResult(success=ok, auth_data=auth_data.login if ok else None)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        plan = self.plans.get(address, [])
        if plan and plan[0] in ("451", "550"):
            code = plan.pop(0)
            return "451 4.7.1 Try again later" if code == "451" else "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        rcpt = envelope.rcpt_tos[0]
        self.received.append(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "login": session.auth_data,
                "peer": session.peer,
                "data": envelope.original_content,
            }
        )
        plan = self.plans.get(rcpt, [])
        if plan and plan[0] == "hang":
            # Accepted and kept, but the 250 comes after the dispatcher's deadline (2 s):
            # to the dispatcher this is a crash between the server's DATA and its record.
            plan.pop(0)
            await asyncio.sleep(3)
        return "250 Message accepted"

    def to(self, address: str) -> list[EmailMessage]:
        return [
            email.message_from_bytes(r["data"], policy=email.policy.default)  # type: ignore[misc]
            for r in self.received
            if address in r["rcpt_tos"]
        ]

    def raw_to(self, address: str) -> list[bytes]:
        return [r["data"] for r in self.received if address in r["rcpt_tos"]]


@pytest.fixture(scope="module")
def smtp() -> Iterator[Mailbox]:
    box = Mailbox()
    box.controller.start()
    yield box
    box.controller.stop()


def serve_in_thread(app: Any, sock: socket.socket) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(
        uvicorn.Config(app, interface="asgi3", log_level="warning", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, thread


class FakeTwilio:
    """Twilio's Messages API as far as the dispatcher uses it, checking what Twilio
    checks: the path's account, HTTP basic auth with that account's SID and token, a
    form with an E.164 ``To``, a ``Body`` and ``From`` or ``MessagingServiceSid``."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = headers_of(scope)
        expected = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()

        async def error(status: int, code: int, message: str) -> None:
            out = json.dumps({"code": code, "message": message, "status": status}).encode()
            await respond(send, status, {"content-type": "application/json"}, out)

        if scope["path"] != f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json":
            return await error(404, 20404, "not found")
        if headers.get("authorization") != expected:
            return await error(401, 20003, "Authenticate")
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return await error(400, 21620, "form expected")
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        if not form.get("To", "").startswith("+") or not form.get("Body"):
            return await error(400, 21604, "To and Body are required")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return await error(400, 21603, "From or MessagingServiceSid is required")
        self.received.append(form)
        sid = "SM" + new_id("x").replace("-", "")[-32:].rjust(32, "0")
        out = json.dumps({"sid": sid, "status": "queued", "to": form["To"]}).encode()
        await respond(send, 201, {"content-type": "application/json"}, out)

    def to(self, number: str) -> list[dict[str, str]]:
        return [f for f in self.received if f["To"] == number]


@pytest.fixture(scope="module")
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    server, thread = serve_in_thread(fake.app, fake.sock)
    yield fake
    server.should_exit = True
    thread.join(timeout=5)


async def email_tenant(
    service: Any, tenant_id: str, receiver: Any, clock: Any, smtp: Mailbox, **extra: Any
) -> Tenant:
    runtime, client = service
    t = await registered_tenant(runtime, client, tenant_id, receiver.url, clock)
    daytime(clock)
    r = await client.put("/v1/messaging/settings", json={"shop_name": "Lumen"}, headers=t.auth)
    assert r.status_code == 200, r.text
    password = new_id("pw")
    smtp.passwords[f"{SMTP_USER}-{tenant_id}"] = password
    body = {
        "provider": "smtp",
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "none",
        "username": f"{SMTP_USER}-{tenant_id}",
        "password": password,
        "from_email": FROM,
        "reply_to": "care@lumen.test",
        **extra,
    }
    r = await client.put("/v1/messaging/channels/email", json=body, headers=t.auth)
    assert r.status_code == 200, r.text
    return t


@pytest.fixture
async def mail(service, tenant_id, receiver, clock, smtp) -> Tenant:
    return await email_tenant(service, tenant_id, receiver, clock, smtp)


@pytest.fixture
async def texting(service, tenant_id, receiver, clock, twilio) -> Tenant:
    runtime, client = service
    t = await registered_tenant(runtime, client, tenant_id, receiver.url, clock)
    daytime(clock)
    body = {
        "provider": "twilio",
        "account_sid": ACCOUNT_SID,
        "auth_token": AUTH_TOKEN,
        "from_number": SHOP_PHONE,
        "api_base": twilio.base,
    }
    r = await client.put("/v1/messaging/channels/sms", json=body, headers=t.auth)
    assert r.status_code == 200, r.text
    return t


def address(t: Tenant, customer: str) -> str:
    return f"{customer}@{t.id}.example.com"


async def mail_customer(t: Tenant, smtp: Mailbox, customer: str, **info: Any) -> str:
    """A customer known to messaging by an order; the journey's own welcome for that
    order has arrived (so it cannot take a plan made for the test's message)."""
    to = address(t, customer)
    await t.customer(customer, email=to, **info)
    await eventually(lambda: asyncio.sleep(0, smtp.to(to)), bool, timeout=20)
    return to


async def mails(t: Tenant, smtp: Mailbox, customer: str) -> list[EmailMessage]:
    """What arrived of the test's own messages (not the journey's), by Message-ID."""
    ids = {f"<{m['id']}@lumen.test>" for m in await t.messages(customer)}
    return [m for m in smtp.to(address(t, customer)) if m["Message-ID"] in ids]


def nudges(twilio: FakeTwilio, phone: str) -> list[dict[str, str]]:
    """The test's loyalty nudges to ``phone`` (not the journey's welcome)."""
    return [f for f in twilio.to(phone) if f["Body"].startswith("Nudge")]


def wait_between(m: dict[str, Any]) -> timedelta:
    return datetime.fromisoformat(m["next_attempt_at"]) - datetime.fromisoformat(
        m["last_attempt_at"]
    )


def retrying(ms: list[dict[str, Any]]) -> bool:
    return bool(ms) and (ms[0]["reason"] or "").startswith("retry")


class TestSmtpEmail:
    async def test_marketing_mail_is_multipart_with_one_click_unsubscribe(self, mail, smtp):
        own = {
            "subject": "How was your order, {{ first_name }}?",
            "text": "Tell us: {{ survey_url }}",
            "html": "<p>Tell us: <a href='{{ survey_url }}'>survey</a></p>",
        }
        r = await mail.client.put(
            "/v1/messaging/templates/survey_invite/email", json=own, headers=mail.auth
        )
        assert r.status_code == 200, r.text
        to = await mail_customer(mail, smtp, "c-survey", first_name="Ana")
        await mail.request(
            "c-survey", kind="survey_invite", variables={"survey_url": "https://lumen.test/s/1"}
        )
        [m] = await mail.wait("c-survey", statuses("sent"))
        [msg] = await mails(mail, smtp, "c-survey")
        envelope = next(r for r in smtp.received if to in r["rcpt_tos"])
        assert envelope["mail_from"] == FROM and envelope["login"].decode().startswith(SMTP_USER)
        assert msg["To"] == to and msg["Subject"] == "How was your order, Ana?"
        assert msg["From"] == f"Lumen <{FROM}>" and msg["Reply-To"] == "care@lumen.test"
        assert msg["Message-ID"] == f"<{m['id']}@lumen.test>"
        assert msg.get_content_type() == "multipart/alternative"
        plain = msg.get_body(("plain",))
        rich = msg.get_body(("html",))
        assert plain is not None and rich is not None
        plain_text, html = plain.get_content(), rich.get_content()
        assert "https://lumen.test/s/1" in plain_text and "https://lumen.test/s/1" in html
        unsub = msg["List-Unsubscribe"].strip("<>")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert unsub in plain_text and unsub in html
        # The mail client's one-click POST unsubscribes.
        done = await mail.client.post(
            unsub.removeprefix("http://testserver"), data={"List-Unsubscribe": "One-Click"}
        )
        assert done.status_code == 200
        async with mail.runtime.sessionmaker() as session:
            contact = await session.get(MessageContact, (mail.id, "c-survey"))
        assert contact is not None and contact.email_unsubscribed_at is not None

    async def test_dkim_signature_verifies(self, service, tenant_id, receiver, clock, smtp):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        dkim_cfg = {"domain": "lumen.test", "selector": "ag1", "private_key": pem}
        t = await email_tenant(service, tenant_id, receiver, clock, smtp, dkim=dkim_cfg)
        to = await mail_customer(t, smtp, "c-dkim")
        await t.request("c-dkim", kind="loyalty_nudge")
        [m] = await t.wait("c-dkim", statuses("sent"))
        [raw] = [r for r in smtp.raw_to(to) if f"<{m['id']}@lumen.test>".encode() in r]
        assert raw.startswith(b"DKIM-Signature:")
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
        looked_up: list[bytes] = []

        def dns(name: bytes, timeout: int = 5) -> bytes:
            looked_up.append(name)
            return record if name == b"ag1._domainkey.lumen.test." else b""

        assert dkim.verify(raw, dnsfunc=dns)
        assert looked_up == [b"ag1._domainkey.lumen.test."]
        signature = raw.split(b"\r\n\r\n", 1)[0].decode()
        assert "list-unsubscribe-post" in signature.lower()
        # Altered in transit: the signature no longer holds.
        assert not dkim.verify(raw.replace(b"Lumen", b"Lumen!", 1), dnsfunc=dns)

    async def test_451_retries_then_delivers_once(self, mail, smtp, clock):
        to = await mail_customer(mail, smtp, "c-451")
        smtp.plans[to] = ["451"]
        await mail.request("c-451", category="transactional")
        [m] = await mail.wait("c-451", retrying)
        assert m["reason"] == "retry: SMTP 451 4.7.1 Try again later (attempt 1 of 3)"
        clock.advance(wait_between(m))
        [m] = await mail.wait("c-451", statuses("sent"))
        assert m["attempts"] == 2 and len(await mails(mail, smtp, "c-451")) == 1
        decisions = [d["decision"] for d in m["decisions"]]
        assert decisions.count("attempt") == 2 and decisions[-1] == "delivered"

    async def test_550_fails_at_once_and_dead_letters(self, mail, smtp, stack):
        to = await mail_customer(mail, smtp, "c-550")
        smtp.plans[to] = ["550"]
        async with TopicTap(stack.kafka_bootstrap_servers, "afterglow.messages.dlq") as tap:
            rid = await mail.request("c-550", category="transactional")
            [m] = await mail.wait("c-550", statuses("failed"))
            [record] = await tap.wait_for_records(
                lambda r: dict(r.headers).get("ce_tenantid") == mail.id.encode()
            )
        assert m["attempts"] == 1
        assert m["reason"] == "rejected: SMTP 550 5.1.1 No such user"
        assert dict(record.headers)["x-error"] == m["reason"].encode()
        assert json.loads(record.value)["request_id"] == rid
        assert await mails(mail, smtp, "c-550") == []
        # The mailbox does not exist: not even a receipt goes there again.
        await mail.request("c-550", kind="check_in", category="transactional")
        ms = await mail.wait("c-550", statuses("failed", "suppressed"))
        later = next(x for x in ms if x["status"] == "suppressed")
        assert later["reason"] == "address_suppressed: hard_bounce"

    async def test_retry_after_a_lost_reply_carries_the_same_message_id(self, mail, smtp, clock):
        to = await mail_customer(mail, smtp, "c-lost")
        smtp.plans[to] = ["hang"]
        await mail.request("c-lost", category="transactional")
        [m] = await mail.wait("c-lost", retrying)
        assert m["reason"].startswith("retry: smtp timeout after 2s")
        clock.advance(wait_between(m))
        [m] = await mail.wait("c-lost", statuses("sent"))
        first, second = await mails(mail, smtp, "c-lost")
        assert first["Message-ID"] == second["Message-ID"] == f"<{m['id']}@lumen.test>"

    async def test_a_tenant_s_connection_is_reused(self, mail, smtp):
        to = await mail_customer(mail, smtp, "c-pool")
        peers = []
        for _ in range(2):
            rid = await mail.request("c-pool", category="transactional")
            await mail.wait("c-pool", lambda ms, r=rid: any(
                m["request_id"] == r and m["status"] == "sent" for m in ms
            ))  # fmt: skip
            [m] = [m for m in await mail.messages("c-pool") if m["request_id"] == rid]
            mid = f"<{m['id']}@lumen.test>".encode()
            [peer] = [r["peer"] for r in smtp.received if to in r["rcpt_tos"] and mid in r["data"]]
            peers.append(peer)
        # The second message went over the first one's connection: no new handshake.
        assert peers[0] == peers[1]

    async def test_credentials_are_sealed_hidden_and_rotated_without_restart(self, mail, smtp):
        r = await mail.client.get("/v1/messaging/channels", headers=mail.auth)
        assert r.status_code == 200
        [email_ch] = [c for c in r.json()["channels"] if c["channel"] == "email"]
        user = f"{SMTP_USER}-{mail.id}"
        assert email_ch["secret_set"] is True and smtp.passwords[user] not in r.text
        async with mail.runtime.sessionmaker() as session:
            stored = await session.scalar(
                text("SELECT secret FROM journeys.messaging_channels WHERE tenant_id = :t"),
                {"t": mail.id},
            )
        assert stored.startswith("agsb1:") and smtp.passwords[user] not in stored
        # The server's password changes; so does the tenant's setting; the next message
        # uses it (read at each send).
        smtp.passwords[user] = new_id("rotated")
        body = {
            "provider": "smtp",
            "host": "127.0.0.1",
            "port": smtp.port,
            "security": "none",
            "username": user,
            "password": smtp.passwords[user],
            "from_email": FROM,
        }
        r = await mail.client.put("/v1/messaging/channels/email", json=body, headers=mail.auth)
        assert r.status_code == 200 and smtp.passwords[user] not in r.text
        await mail_customer(mail, smtp, "c-rot")
        await mail.request("c-rot", category="transactional")
        await mail.wait("c-rot", statuses("sent"))
        assert len(await mails(mail, smtp, "c-rot")) == 1
        # An update that leaves the password out keeps the stored one.
        del body["password"]
        r = await mail.client.put("/v1/messaging/channels/email", json=body, headers=mail.auth)
        assert r.status_code == 200 and r.json()["secret_set"] is True

    async def test_channel_settings_are_validated(self, mail):
        # Back to the webhook first: an update of an SMTP channel may keep its password.
        r = await mail.client.delete("/v1/messaging/channels/email", headers=mail.auth)
        assert r.status_code == 200 and r.json()["provider"] == "webhook"
        bad = [
            ("email", {"provider": "twilio", "account_sid": ACCOUNT_SID, "auth_token": "x" * 9,
                       "from_number": SHOP_PHONE}, "provider"),
            ("sms", {"provider": "smtp", "host": "h.test", "from_email": FROM}, "provider"),
            ("sms", {"provider": "twilio", "account_sid": ACCOUNT_SID, "auth_token": "x" * 9,
                     "from_number": "12"}, None),
            ("email", {"provider": "smtp", "host": "h.test", "from_email": FROM,
                       "username": "u"}, "password"),
        ]  # fmt: skip
        for channel, body, field in bad:
            r = await mail.client.put(
                f"/v1/messaging/channels/{channel}", json=body, headers=mail.auth
            )
            assert r.status_code == 422, (body, r.text)
            if field:
                assert r.json()["error"].get("field") == field, r.text

    async def test_control_characters_are_refused_naming_the_field(self, mail):
        # A NUL reached the jsonb config (or a text column) and failed there with a 500;
        # a newline in a header field would let a merchant inject headers.
        r = await mail.client.delete("/v1/messaging/channels/email", headers=mail.auth)
        assert r.status_code == 200
        smtp = {"provider": "smtp", "host": "h.test", "from_email": FROM}
        twilio = {
            "provider": "twilio",
            "account_sid": ACCOUNT_SID,
            "auth_token": "x" * 9,
            "from_number": SHOP_PHONE,
        }
        bad = [
            ("email", {**smtp, "from_email": "a\u0000b@lumen.test"}, "from_email"),
            ("email", {**smtp, "from_name": "Lumen\u0000"}, "from_name"),
            ("email", {**smtp, "from_name": "Lumen\r\nBcc: x@evil.test"}, "from_name"),
            ("email", {**smtp, "username": "u\u0000", "password": "p"}, "username"),
            ("email", {**smtp, "tls_ca_pem": "-----BEGIN\u0000"}, "tls_ca_pem"),
            ("sms", {**twilio, "auth_token": "token\u0000-0123"}, "auth_token"),
            ("sms", {**twilio, "api_base": "https://a\u0000b/"}, "api_base"),
        ]  # fmt: skip
        for channel, body, field in bad:
            r = await mail.client.put(
                f"/v1/messaging/channels/{channel}", json=body, headers=mail.auth
            )
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["field"].split(".")[-1] == field, r.text
        r = await mail.client.put(
            "/v1/messaging/provider-events",
            json={"postmark_username": "pm\u0000", "postmark_password": "pm-secret-0123"},
            headers=mail.auth,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "postmark_username", r.text
        # Nothing was stored: both channels are still the signed webhook.
        r = await mail.client.get("/v1/messaging/channels", headers=mail.auth)
        assert [c["provider"] for c in r.json()["channels"]] == ["webhook", "webhook"]


class TestSms:
    async def test_ucs2_sms_counts_its_segments(self, texting, twilio):
        own = {"text": "Hej {{ first_name }} 👋 " + "ł" * 80}
        r = await texting.client.put(
            "/v1/messaging/templates/check_in/sms", json=own, headers=texting.auth
        )
        assert r.status_code == 200, r.text
        await texting.customer("c-sms", phone="+1 415 555 0123", email=None, first_name="Ola")
        await texting.request("c-sms", kind="check_in", category="transactional", channel="sms")
        [m] = await texting.wait("c-sms", statuses("sent"))
        [form] = [f for f in twilio.to("+14155550123") if f["Body"].startswith("Hej")]
        assert form["From"] == SHOP_PHONE and form["Body"] == "Hej Ola 👋 " + "ł" * 80
        delivered = m["decisions"][-1]
        assert delivered["decision"] == "delivered"
        # 11 + 80 UTF-16 units (the emoji takes two): over 70, so 67 a segment.
        assert delivered["reason"].endswith("(2 segments, UCS-2)")

    async def test_inbound_stop_suppresses_marketing_and_start_lifts_it(
        self, texting, twilio, stack
    ):
        phone = "+14155550124"
        own = {"text": "Nudge: you have points at {{ shop_name }}"}
        r = await texting.client.put(
            "/v1/messaging/templates/loyalty_nudge/sms", json=own, headers=texting.auth
        )
        assert r.status_code == 200, r.text
        await texting.customer("c-stop", phone=phone, email=None, accepts_marketing=True)
        path = f"/v1/messaging/inbound/twilio/{texting.id}"
        form = {"From": phone, "To": SHOP_PHONE, "Body": " stop ", "MessageSid": "SM1"}
        url = "http://testserver" + path
        r = await texting.client.post(path, data=form)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        forged = {"x-twilio-signature": twilio_signature("wrong-token", url, form.items())}
        assert (await texting.client.post(path, data=form, headers=forged)).status_code == 401
        signed = {"x-twilio-signature": twilio_signature(AUTH_TOKEN, url, form.items())}
        async with TopicTap(stack.kafka_bootstrap_servers, "afterglow.customers") as tap:
            r = await texting.client.post(path, data=form, headers=signed)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
            events = await tap.wait_for(
                lambda e: e.tenantid == texting.id and e.type.endswith("unsubscribed.v1")
            )
        # The rest of the platform hears it as it hears an unsubscribe link.
        assert [(e.subject, e.data.channel) for e in events] == [("c-stop", "sms")]
        assert (await sms_unsubscribed(texting, "c-stop")) is not None
        await texting.request("c-stop", kind="loyalty_nudge", channel="sms")
        [m] = await texting.wait("c-stop", statuses("suppressed"))
        assert m["reason"] == "address_suppressed: sms_stop"
        assert nudges(twilio, phone) == []
        form = {"From": phone, "To": SHOP_PHONE, "Body": "START", "MessageSid": "SM2"}
        signed = {"x-twilio-signature": twilio_signature(AUTH_TOKEN, url, form.items())}
        assert (await texting.client.post(path, data=form, headers=signed)).status_code == 200
        assert (await sms_unsubscribed(texting, "c-stop")) is None
        await texting.request("c-stop", kind="loyalty_nudge", channel="sms")
        await texting.wait("c-stop", statuses("suppressed", "sent"))
        assert len(nudges(twilio, phone)) == 1
        # HELP is answered in the reply (TwiML), naming the shop and the keywords.
        r = await texting.client.put(
            "/v1/messaging/settings", json={"shop_name": "Lumen & Co"}, headers=texting.auth
        )
        assert r.status_code == 200
        form = {"From": phone, "To": SHOP_PHONE, "Body": "help", "MessageSid": "SM3"}
        signed = {"x-twilio-signature": twilio_signature(AUTH_TOKEN, url, form.items())}
        r = await texting.client.post(path, data=form, headers=signed)
        assert r.status_code == 200
        assert "<Message>Messages from Lumen &amp; Co. Reply STOP" in r.text


async def sms_unsubscribed(t: Tenant, customer: str) -> datetime | None:
    async with t.runtime.sessionmaker() as session:
        contact = await session.get(MessageContact, (t.id, customer), populate_existing=True)
        return contact.sms_unsubscribed_at if contact else None


async def suppression_details(t: Tenant) -> dict[str, str | None]:
    async with t.runtime.sessionmaker() as session:
        rows = await session.execute(
            text(
                "SELECT address_hash, detail FROM journeys.message_suppressions"
                " WHERE tenant_id = :t"
            ),
            {"t": t.id},
        )
        return {k: v for k, v in rows.all()}


def sendgrid_sign(key: ec.EllipticCurvePrivateKey, timestamp: str, body: bytes) -> str:
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


class TestProviderEvents:
    async def test_signed_sendgrid_batch_suppresses_bounce_and_complaint(self, mail, smtp):
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        r = await mail.client.put(
            "/v1/messaging/provider-events",
            json={"sendgrid_public_key": base64.b64encode(public).decode()},
            headers=mail.auth,
        )
        assert r.status_code == 200, r.text
        bounced = await mail_customer(mail, smtp, "c-bounce")
        complained = await mail_customer(mail, smtp, "c-spam")
        batch = [
            {"email": bounced.upper(), "event": "bounce", "type": "bounce",
             "reason": "550 5.1.1 unknown user", "sg_event_id": "e1", "timestamp": 1},
            {"email": complained, "event": "spamreport", "sg_event_id": "e2", "timestamp": 1},
            {"email": complained, "event": "delivered", "sg_event_id": "e3", "timestamp": 1},
        ]  # fmt: skip
        body = json.dumps(batch).encode()
        path = f"/v1/messaging/events/sendgrid/{mail.id}"
        ts = str(int(time.time()))
        unsigned = await mail.client.post(path, content=body)
        assert unsigned.status_code == 401
        other_key = ec.generate_private_key(ec.SECP256R1())
        forged = {
            "x-twilio-email-event-webhook-signature": sendgrid_sign(other_key, ts, body),
            "x-twilio-email-event-webhook-timestamp": ts,
        }
        assert (await mail.client.post(path, content=body, headers=forged)).status_code == 401
        signed = {
            "x-twilio-email-event-webhook-signature": sendgrid_sign(key, ts, body),
            "x-twilio-email-event-webhook-timestamp": ts,
        }
        r = await mail.client.post(path, content=body, headers=signed)
        assert r.status_code == 200, r.text
        assert r.json() == {"suppressed": 2, "hard_bounces": 1, "complaints": 1}
        for customer in ("c-bounce", "c-spam"):
            await mail.request(customer, kind="loyalty_nudge")
            await mail.request(customer, kind="check_in", category="transactional")
        bounce_ms = await mail.wait("c-bounce", statuses("suppressed", "suppressed"))
        assert {m["reason"] for m in bounce_ms} == {"address_suppressed: hard_bounce"}
        spam_ms = await mail.wait("c-spam", statuses("suppressed", "sent"))
        [spam_marketing] = [m for m in spam_ms if m["status"] == "suppressed"]
        assert spam_marketing["kind"] == "loyalty_nudge"
        assert spam_marketing["reason"] == "address_suppressed: complaint"
        assert await mails(mail, smtp, "c-bounce") == []
        assert len(await mails(mail, smtp, "c-spam")) == 1
        decisions = [d["reason"] for d in spam_marketing["decisions"]]
        assert "address_suppressed: complaint" in decisions
        metrics = await mail.client.get("/metrics")
        assert f'afterglow_messaging_complaint_rate{{tenant="{mail.id}"}}' in metrics.text
        # The list keeps digests, not addresses; an erasure leaves the suppression in
        # force and wipes the provider's words (which may quote the address).
        details = await suppression_details(mail)
        assert len(details) == 2 and "550 5.1.1 unknown user" in details.values()
        assert not any(bounced in key or "@" in key for key in details)
        await mail.publish(CustomerErasureRequested(requested_at=mail.clock.now()), "c-bounce")

        async def scrubbed() -> bool:
            return "550 5.1.1 unknown user" not in (await suppression_details(mail)).values()

        await eventually(scrubbed, bool, timeout=20)
        assert len(await suppression_details(mail)) == 2

    async def test_postmark_needs_its_basic_auth(self, mail, smtp):
        r = await mail.client.put(
            "/v1/messaging/provider-events",
            json={"postmark_username": "pm", "postmark_password": "pm-secret-0123"},
            headers=mail.auth,
        )
        assert r.status_code == 200 and "pm-secret" not in r.text
        bounced = await mail_customer(mail, smtp, "c-pm")
        event = {"RecordType": "Bounce", "Type": "HardBounce", "TypeCode": 1, "Email": bounced}
        path = f"/v1/messaging/events/postmark/{mail.id}"
        assert (await mail.client.post(path, json=event)).status_code == 401
        wrong = await mail.client.post(path, json=event, auth=("pm", "guess-0123456"))
        assert wrong.status_code == 401
        r = await mail.client.post(path, json=event, auth=("pm", "pm-secret-0123"))
        assert r.status_code == 200 and r.json()["hard_bounces"] == 1
        await mail.request("c-pm", kind="check_in", category="transactional")
        [m] = await mail.wait("c-pm", statuses("suppressed"))
        assert m["reason"] == "address_suppressed: hard_bounce"


class FakeSns:
    """AWS's side of SNS as an endpoint sees it: the signing certificate served by URL,
    and the SubscribeURL that confirms a subscription (it records the token). Messages
    are signed here the way SNS documents it (SignatureVersion 2: SHA256withRSA over
    "Name\\nvalue\\n" of the type's fields, in order)."""

    TOPIC = "arn:aws:sns:eu-west-1:123456789012:lumen-ses-events"

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM)
        self.confirmed: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.cert_url = f"{self.base}/SimpleNotificationService-0123.pem"

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        query = dict(parse_qsl(scope["query_string"].decode()))
        if scope["path"] == "/SimpleNotificationService-0123.pem":
            return await respond(send, 200, {"content-type": "text/plain"}, self.pem)
        if scope["path"] == "/" and query.get("Action") == "ConfirmSubscription":
            self.confirmed.append(query["Token"])
            return await respond(send, 200, {"content-type": "text/xml"}, b"<ok/>")
        await respond(send, 404, {"content-type": "text/plain"}, b"not found")

    def message(self, kind: str, key: Any = None, **fields: str) -> dict[str, str]:
        m = {
            "Type": kind,
            "MessageId": new_id("sns"),
            "TopicArn": self.TOPIC,
            "Timestamp": "2026-12-03T12:00:00.000Z",
            "SignatureVersion": "2",
            "SigningCertURL": self.cert_url,
            **fields,
        }
        signed = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        if kind != "Notification":
            signed = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token"]
            signed += ["TopicArn", "Type"]
        text_ = "".join(f"{k}\n{m[k]}\n" for k in signed if k in m)
        signature = (key or self.key).sign(text_.encode(), padding.PKCS1v15(), hashes.SHA256())
        return {**m, "Signature": base64.b64encode(signature).decode()}


@pytest.fixture(scope="module")
def fake_sns() -> Iterator[FakeSns]:
    fake = FakeSns()
    server, thread = serve_in_thread(fake.app, fake.sock)
    yield fake
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def ses(mail: Tenant, fake_sns: FakeSns) -> Iterator[Tenant]:
    """The mail tenant, with this run's SNS standing in for AWS's hosts."""
    deps = deps_of(mail.runtime)
    previous = deps.messaging
    prefix = re.escape(fake_sns.base) + "/"
    deps.messaging = previous.model_copy(update={"sns_url_prefix": prefix})
    yield mail
    deps.messaging = previous


class TestSesThroughSns:
    async def post(self, t: Tenant, message: Any) -> httpx.Response:
        # SNS posts JSON with a text/plain content type.
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        return await t.client.post(
            f"/v1/messaging/events/ses/{t.id}",
            content=body,
            headers={"content-type": "text/plain; charset=UTF-8"},
        )

    async def test_confirms_its_topic_and_suppresses_bounces_and_complaints(
        self, ses, fake_sns, smtp
    ):
        r = await ses.client.put(
            "/v1/messaging/provider-events",
            json={"ses_topic_arn": FakeSns.TOPIC},
            headers=ses.auth,
        )
        assert r.status_code == 200 and r.json()["ses_topic_arn"] == FakeSns.TOPIC, r.text
        token = "tok-" + new_id("t")
        confirm = fake_sns.message(
            "SubscriptionConfirmation",
            Message="You have chosen to subscribe to the topic.",
            Token=token,
            SubscribeURL=f"{fake_sns.base}/?Action=ConfirmSubscription&TopicArn=x&Token={token}",
        )
        r = await self.post(ses, confirm)
        assert r.status_code == 200 and r.json() == {"confirmed": True}, r.text
        assert fake_sns.confirmed == [token]

        bounced = await mail_customer(ses, smtp, "c-ses-bounce")
        complained = await mail_customer(ses, smtp, "c-ses-spam")
        full = await mail_customer(ses, smtp, "c-ses-full")
        bounce = {
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [
                    {"emailAddress": bounced, "diagnosticCode": "smtp; 550 5.1.1 user unknown"}
                ],
            },
            "mail": {"messageId": "0100018c-1"},
        }
        transient = {
            "notificationType": "Bounce",
            "bounce": {"bounceType": "Transient", "bouncedRecipients": [{"emailAddress": full}]},
        }
        complaint = {
            "eventType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": complained}],
                "complaintFeedbackType": "abuse",
            },
        }
        answers = [
            (await self.post(ses, fake_sns.message("Notification", Message=json.dumps(m)))).json()
            for m in (bounce, transient, complaint)
        ]
        assert answers == [
            {"suppressed": 1, "hard_bounces": 1, "complaints": 0},
            {"suppressed": 0, "hard_bounces": 0, "complaints": 0},
            {"suppressed": 1, "hard_bounces": 0, "complaints": 1},
        ]
        await ses.request("c-ses-bounce", kind="check_in", category="transactional")
        [m] = await ses.wait("c-ses-bounce", statuses("suppressed"))
        assert m["reason"] == "address_suppressed: hard_bounce"
        details = await suppression_details(ses)
        assert "smtp; 550 5.1.1 user unknown" in details.values()

    async def test_forgeries_are_refused(self, ses, fake_sns):
        r = await ses.client.put(
            "/v1/messaging/provider-events",
            json={"ses_topic_arn": FakeSns.TOPIC},
            headers=ses.auth,
        )
        assert r.status_code == 200
        event = json.dumps(
            {
                "notificationType": "Complaint",
                "complaint": {"complainedRecipients": [{"emailAddress": "a@b.test"}]},
            }
        )
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = fake_sns.message("Notification", key=stranger, Message=event)
        other_topic = {
            **fake_sns.message("Notification", Message=event),
            "TopicArn": "arn:aws:sns:eu-west-1:999999999999:someone-else",
        }
        elsewhere = {
            **fake_sns.message("Notification", Message=event),
            "SigningCertURL": "http://169.254.169.254/latest/cert.pem",
        }
        tampered = {**fake_sns.message("Notification", Message=event), "Message": "{}"}
        for message in (forged, other_topic, elsewhere, tampered):
            r = await self.post(ses, message)
            assert r.status_code == 401, (message, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
        r = await self.post(ses, b"not json")
        assert r.status_code == 422
        r = await self.post(ses, {"Type": "Notification", "Message": "{}"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "MessageId"
        r = await ses.client.put(
            "/v1/messaging/provider-events",
            json={"ses_topic_arn": "arn:aws:sns:eu-west-1:12:not-an-account"},
            headers=ses.auth,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "ses_topic_arn"
        assert await suppression_details(ses) == {}


class TestRateLimit:
    async def test_sends_at_most_the_channel_rate(self, mail, smtp, clock):
        await mail_customer(mail, smtp, "c-rate")  # the journey's welcome is out first
        r = await mail.client.get("/v1/messaging/channels", headers=mail.auth)
        [current] = [c for c in r.json()["channels"] if c["channel"] == "email"]
        body = {"provider": "smtp", **current["config"], "rate_per_s": 1}
        r = await mail.client.put("/v1/messaging/channels/email", json=body, headers=mail.auth)
        assert r.status_code == 200 and r.json()["rate_per_s"] == 1, r.text
        for _ in range(3):
            await mail.request("c-rate", category="transactional")
        ms = await mail.wait("c-rate", statuses("sent", "deferred", "deferred"))
        assert {m["reason"] for m in ms if m["status"] == "deferred"} == {"rate_limited"}
        clock.advance(timedelta(seconds=1))
        await mail.wait("c-rate", statuses("sent", "sent", "deferred"))
        clock.advance(timedelta(seconds=1))
        await mail.wait("c-rate", statuses("sent", "sent", "sent"))
        assert len(await mails(mail, smtp, "c-rate")) == 3


class TestDevMailCatcher:
    async def test_catcher_keeps_eml_files_and_shows_the_html(
        self, service, tenant_id, receiver, clock, tmp_path
    ):
        catcher = MailCatcher(tmp_path / "mail", smtp_port=free_port(), http_port=free_port())
        with catcher.running():
            runtime, client = service
            t = await registered_tenant(runtime, client, tenant_id, receiver.url, clock)
            daytime(clock)
            body = {
                "provider": "smtp",
                "host": "127.0.0.1",
                "port": catcher.smtp_port,
                "security": "none",
                "from_email": FROM,
            }
            r = await client.put("/v1/messaging/channels/email", json=body, headers=t.auth)
            assert r.status_code == 200, r.text
            await t.customer("c-dev", email=address(t, "c-dev"))
            await t.request(
                "c-dev", kind="review_request", variables={"review_url": "https://lumen.test/r"}
            )
            [m] = await t.wait("c-dev", statuses("sent"))
            mid = f"<{m['id']}@lumen.test>"
            [file] = [p for p in catcher.messages() if mid.encode() in p.read_bytes()]
            assert file.suffix == ".eml"
            async with httpx.AsyncClient(base_url=catcher.url) as web:
                index = await web.get("/")
                listed = (await web.get("/messages.json")).json()
                page = await web.get(f"/m/{file.name}")
                raw = await web.get(f"/m/{file.name}.raw")
                missing = await web.get("/m/../../etc/passwd")
            [entry] = [e for e in listed if e["message_id"] == mid]
            assert index.status_code == 200 and f"/m/{file.name}" in index.text
            assert html.escape(entry["subject"]) in index.text
            assert page.status_code == 200 and "<iframe sandbox" in page.text
            assert html.escape("https://lumen.test/r", quote=True) in page.text
            assert raw.content == file.read_bytes() and missing.status_code == 404


def certificate_authority(folder: Path) -> tuple[str, ssl.SSLContext]:
    """A private CA (PEM) and a server context whose certificate it signed for
    127.0.0.1: what a merchant's own mail server may well present."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lumen test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return ca.public_bytes(serialization.Encoding.PEM).decode(), context


class TestSmtpTls:
    @pytest.mark.parametrize("security", ["starttls", "tls"])
    async def test_delivers_over_verified_tls_with_auth(
        self, service, tenant_id, receiver, clock, tmp_path, security
    ):
        ca_pem, context = certificate_authority(tmp_path)
        tls = (
            {"tls_context": context, "require_starttls": True}
            if security == "starttls"
            else {"ssl_context": context}
        )
        box = Mailbox(**tls)
        box.controller.start()
        try:
            t = await email_tenant(
                service, tenant_id, receiver, clock, box, security=security, tls_ca_pem=ca_pem
            )
            await mail_customer(t, box, "c-tls")
            await t.request("c-tls", category="transactional")
            await t.wait("c-tls", statuses("sent"))
            [got] = await mails(t, box, "c-tls")
            assert got["To"] == address(t, "c-tls")
            # Without the merchant's CA the certificate does not verify: no mail goes out
            # over an unverified connection; it is retried, the CA may be added meanwhile.
            r = await t.client.get("/v1/messaging/channels", headers=t.auth)
            [current] = [c for c in r.json()["channels"] if c["channel"] == "email"]
            config = {k: v for k, v in current["config"].items() if k != "tls_ca_pem"}
            r = await t.client.put(
                "/v1/messaging/channels/email", json={"provider": "smtp", **config}, headers=t.auth
            )
            assert r.status_code == 200, r.text
            await t.request("c-tls", category="transactional")
            ms = await t.wait("c-tls", lambda ms: any(retrying([m]) for m in ms))
            [retry] = [m for m in ms if retrying([m])]
            assert "smtp" in retry["reason"] and len(await mails(t, box, "c-tls")) == 1
        finally:
            box.controller.stop()
