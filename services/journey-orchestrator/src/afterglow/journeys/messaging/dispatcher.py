"""The dispatcher: claims due messages, applies the policy, renders, and hands each to
the tenant's channel for its kind (``channels``: the signed webhook, SMTP, Twilio).

Why it looks like this:

* Claims use ``FOR UPDATE SKIP LOCKED`` so any number of replicas share the work.
* A claimed message is *leased*, not held in an open transaction: its
  ``next_attempt_at`` moves to now + timeout + margin and the claim commits before the
  HTTP call. A replica that dies mid-send leaves the message to be retried after the
  lease (at-least-once; the receiver dedupes on ``webhook-id``, the message id).
* Sends run as independent tasks, up to ``concurrency`` at once (``per_tenant_concurrency``
  for one tenant), each under a total deadline. A hanging endpoint holds its tenant's
  slots until the deadline, never the loop nor the other tenants' slots:
  the loop keeps claiming for free slots, and a failing message's next try is its own
  ``next_attempt_at``, so other customers' messages are never queued behind it.
* No poll sets the pace: the loop waits on a wake-up, set by a NOTIFY when a message
  is queued (a trigger on the messages table, a LISTEN connection of its own) and by
  every send that ends, so a message leaves within milliseconds when nothing is queued
  and one tenant is sent to at its provider's rate, ``per_tenant_concurrency`` in
  flight. ``poll_interval_s`` is only the fallback (retries and deferrals falling due).
* Every policy time decision reads the injected clock; only the signature timestamp is
  wall time, because the receiver compares it with its own clock.
* The claim reads each tenant's channel settings (credentials opened then, so a rotated
  one applies to the next send) and takes the channel's rate-limit token in the same
  transaction; the batch's contacts and suppressed addresses come in one query each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from prometheus_client import Counter as Metric
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events.listen import Listener
from afterglow.events.shutdown import cancel_and_wait
from afterglow.events.topics import TOPICS_BY_NOUN
from afterglow.events.tracing import SpanKind, continued
from afterglow.journeys.deps import messaging_settings
from afterglow.journeys.messaging import policy, store
from afterglow.journeys.messaging.channels import Job, Outcome, Route, Senders, channel_for
from afterglow.journeys.messaging.channels.rate import take
from afterglow.journeys.messaging.channels.smtp_pool import SmtpPool
from afterglow.journeys.messaging.channels.webhook import webhook_session
from afterglow.journeys.messaging.models import (
    Message,
    MessageContact,
    MessageTemplate,
    MessagingChannel,
    MessagingTenantSettings,
)
from afterglow.journeys.messaging.sent_writer import SentWriter
from afterglow.journeys.messaging.settings import MessagingSettings
from afterglow.journeys.messaging.templates import TemplateRenderError, context, render
from afterglow.kit.app import Runtime, Worker
from afterglow.kit.polling import PollingWorker

log = logging.getLogger(__name__)

DLQ_TOPIC = TOPICS_BY_NOUN["message"].dlq
NOTIFY_CHANNEL = store.NOTIFY_CHANNEL
__all__ = ["Dispatcher", "Job", "Outcome", "messaging_workers"]

# Settle transactions at once (see Dispatcher.settle): well under the pool's size.
SETTLE_PARALLEL = 4

SENDS = Metric(
    "afterglow_messages_sends_total",
    "Message delivery attempts by channel, provider and result",
    ["channel", "provider", "result"],
)


def route_of(tenant: MessagingTenantSettings | None, row: MessagingChannel | None) -> Route | None:
    """The tenant's channel for a kind; without one, its signed webhook endpoint."""
    if row is not None and row.provider != "webhook":
        return Route(row.provider, row.config, row.secret, row.dkim_key)
    if tenant is not None and tenant.endpoint_url and tenant.endpoint_secret:
        return Route("webhook", {"url": tenant.endpoint_url}, tenant.endpoint_secret)
    return None


def messaging_workers(runtime: Runtime) -> list[Worker]:
    async def messaging_dispatcher(rt: Runtime) -> None:
        await Dispatcher(rt).run()

    return [messaging_dispatcher]


def unsubscribe_url(
    settings: MessagingSettings, runtime: Runtime, tenant_id: str, customer_id: str, channel: str
) -> str:
    base = (settings.public_url or runtime.settings.public_base_url).rstrip("/")
    token = policy.sign_unsubscribe(settings.unsubscribe_secret, tenant_id, customer_id, channel)
    return f"{base}/u/{token}"


def _order_id(m: Message) -> str | None:
    """The order a message is about: the request's, else its variables' (templates)."""
    order_id = m.order_id or m.variables.get("order_id")
    return str(order_id) if order_id else None


@dataclass
class _Claimed:
    """What judging and rendering a claim's messages reads, one query per table for the
    whole claim (a claim of a hundred messages made a round trip per message for its
    template, its order and its tenant's settings)."""

    tenants: dict[str, MessagingTenantSettings]
    channels: dict[tuple[str, str], MessagingChannel]
    contacts: dict[tuple[str, str], MessageContact]
    suppressed: dict[tuple[str, str], dict[str, str]]
    templates: dict[store.TemplateKey, MessageTemplate]
    orders: dict[tuple[str, str], dict[str, Any]]

    @classmethod
    async def read(cls, session: AsyncSession, rows: list[Message]) -> _Claimed:
        tenant_ids = {m.tenant_id for m in rows}
        contacts = await store.load_contacts(session, {(m.tenant_id, m.customer_id) for m in rows})
        orders = {(m.tenant_id, o) for m in rows if (o := _order_id(m))}
        return cls(
            tenants=await store.tenant_settings_rows(session, tenant_ids),
            # Locked: the rate limit's token bucket is taken in this transaction.
            channels=await store.channel_rows(session, tenant_ids),
            contacts={(c.tenant_id, c.customer_id): c for c in contacts},
            suppressed=await store.suppressions_for(session, contacts),
            templates=await store.tenant_template_rows(session, tenant_ids),
            orders=await store.orders_for_templates(session, orders),
        )


class Dispatcher:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.inflight: set[asyncio.Task[None]] = set()
        self.tenant_inflight: Counter[str] = Counter()
        self._holding: set[str] = set()  # messages whose send holds a tenant slot
        self._wake = asyncio.Event()
        self._backlog = False  # the last claim filled its limit: claim again at once
        self.smtp_pool = SmtpPool(max_idle=self.s.per_tenant_concurrency)
        # Opened by run(): a session belongs to the event loop it was made in.
        self._webhooks: aiohttp.ClientSession | None = None
        self._settling = asyncio.Semaphore(SETTLE_PARALLEL)
        self._sent = SentWriter(self._write_sent)

    @property
    def s(self) -> MessagingSettings:
        # Read at every use, not once: settings live on the runtime (afterglow.journeys.deps).
        return messaging_settings(self.rt)

    async def run(self) -> None:
        # Woken by a queued message (NOTIFY from the messages table's trigger) and by
        # every send that ends (a slot frees up): a tenant at its per-tenant cap used
        # to wait out the whole poll interval, which capped it near cap / interval
        # messages a second (8/s) however fast its provider answered. The poll stays
        # as the fallback for what no NOTIFY announces (a retry or a deferral falling
        # due, a lost LISTEN connection).
        self._webhooks = webhook_session(self.s.concurrency)
        listener = Listener(
            self.rt.engine, NOTIFY_CHANNEL, self._wake, name="afterglow-dispatcher-listen"
        )
        listening = asyncio.create_task(listener.run(), name="dispatcher-listen")
        # Not one transaction per round: the sends start after the claim commits, so a
        # send never looks for a lease its claim has not committed yet.
        polling = PollingWorker(
            "messaging-dispatcher",
            self._claim_round,
            self.rt.clock,
            lambda: self.s.poll_interval_s,
            wake=self._wake,
            full=lambda _: self._backlog,
            linger=lambda: self.s.claim_linger_s,
        )
        try:
            await polling.run()
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening
            # A send cut short leaves its lease to expire; another pass retries it.
            await cancel_and_wait(list(self.inflight), timeout_s=10, what="dispatcher")
            await self._sent.close()
            self.smtp_pool.close()
            await self._webhooks.close()

    async def _claim_round(self, now: datetime) -> int:
        """Claim for the free slots and start their sends; how many were started."""
        free = self.s.concurrency - len(self.inflight)
        if free <= 0:
            self._backlog = False  # nothing to claim for: wait for a send to end
            return 0
        limit = min(free, self.s.batch_size)
        judged, jobs = await self.claim(limit)
        for job in jobs:
            self._start(job)
        # A backlog its tenants have slots for: claim on at once. Rows left for want
        # of a slot wait for a send to end (its wake-up, then the linger): claiming on
        # at once made, at one tenant's cap, a claim (seven statements) per slot freed.
        self._backlog = judged == limit
        return len(jobs)

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self.deliver(job), name=f"send-{job.message_id}")
        self.inflight.add(task)
        self.tenant_inflight[job.tenant_id] += 1
        self._holding.add(job.message_id)

        def done(t: asyncio.Task[None]) -> None:
            self.inflight.discard(t)
            self._release(job)  # if the send did not already (it failed or was cut short)
            self._wake.set()  # a slot is free: claim for it now

        task.add_done_callback(done)

    def _release(self, job: Job) -> None:
        """Give back the tenant's slot a send held. Called as soon as the provider has
        answered, before the outcome is settled: the per-tenant cap bounds requests
        at the tenant's provider, and settling is our database's work. Holding the slot
        through the settle too capped a tenant at cap / (request + settle) messages a
        second, and at 50 orders/s welcomes waited seconds for a slot."""
        if job.message_id not in self._holding:
            return
        self._holding.discard(job.message_id)
        self.tenant_inflight[job.tenant_id] -= 1
        if self.tenant_inflight[job.tenant_id] <= 0:
            del self.tenant_inflight[job.tenant_id]
        self._wake.set()

    # --- claim and policy ------------------------------------------------------------

    async def claim(self, limit: int) -> tuple[int, list[Job]]:
        """Claim up to ``limit`` due messages and judge those their tenants have free
        slots for: (how many were judged, the sends to start)."""
        now = self.rt.clock.now()
        cap = self.s.per_tenant_concurrency
        full = [t for t, n in self.tenant_inflight.items() if n >= cap]
        async with self.rt.sessionmaker.begin() as session:
            rows = await store.claim_due_messages(session, now, limit, full)
            # Judged and read for: as many of each tenant's messages as it has free
            # slots. The rest are left as they are, still due, and claimed again once a
            # slot frees up; reading their contacts, orders and suppressions too made a
            # claim at a tenant's cap read for up to ``concurrency`` messages to start a
            # handful.
            room = {t: cap - n for t, n in self.tenant_inflight.items()}
            judged = []
            for message in rows:
                if room.get(message.tenant_id, cap) > 0:
                    judged.append(message)
                    room[message.tenant_id] = room.get(message.tenant_id, cap) - 1
            claimed = await _Claimed.read(session, judged)
            jobs = []
            for message in judged:
                job = await self.evaluate(session, message, claimed, now)
                if job is not None:
                    jobs.append(job)
        return len(judged), jobs

    async def evaluate(
        self, session: AsyncSession, m: Message, claimed: _Claimed, now: datetime
    ) -> Job | None:
        tenant = claimed.tenants.get(m.tenant_id)
        suppressed = claimed.suppressed.get((m.tenant_id, m.customer_id))
        rules = store.policy_settings(tenant, self.s.contact_wait_s, self.s.contact_recheck_s)
        contact = claimed.contacts.get((m.tenant_id, m.customer_id))
        counted: list[datetime] = []
        if m.category == "marketing":
            # Serialise one customer's cap checks across replicas: two dispatchers must
            # not both see "2 of 3" and send two more.
            await store.lock_marketing_cap(session, m.tenant_id, m.customer_id)
            counted = await store.marketing_counted(
                session, m.tenant_id, m.customer_id, m.id, now - rules.window
            )
        facts = policy.MessageFacts(
            category=m.category,
            priority=m.priority,
            channel=m.channel,
            not_before=m.not_before,
            created_at=m.created_at,
        )
        decision = policy.decide(
            now, facts, store.contact_facts(contact, suppressed), rules, counted
        )
        if decision.action == "defer":
            assert decision.until is not None
            until = decision.until
            if decision.reason == "waiting_for_contact":
                # Under the contact's lock: a contact committed since the claim read none
                # makes the message due again now (judged in full on the next claim); one
                # committed after this deferral finds it deferred and wakes it itself.
                await store.lock_contact(session, m.tenant_id, m.customer_id)
                arrived = await store.fresh_contact(session, m.tenant_id, m.customer_id)
                if arrived is not None and (arrived.email or arrived.phone):
                    until = now
                    self._wake.set()
            await self._set(session, m, now, "deferred", decision.reason, until)
            return None
        if decision.action == "suppress":
            await self._set(session, m, now, "suppressed", decision.reason)
            return None
        assert contact is not None and decision.channel is not None
        channel_row = claimed.channels.get((m.tenant_id, decision.channel))
        route = route_of(tenant, channel_row)
        if route is None:
            # Bounded: a tenant that never sets up messaging must not keep every
            # message it was ever sent alive and re-judged forever.
            if now >= m.created_at + timedelta(seconds=self.s.endpoint_wait_s):
                await self._set(session, m, now, "suppressed", "no_endpoint")
                return None
            recheck = now + timedelta(seconds=self.s.endpoint_recheck_s)
            await self._set(session, m, now, "deferred", "no_endpoint", recheck)
            return None
        channel = decision.channel
        template = store.claimed_template(claimed.templates, m.tenant_id, m.template, channel)
        if template is None:
            await self._fail(session, m, now, f"no template {m.template!r} for {channel}")
            return None
        unsub = (
            unsubscribe_url(self.s, self.rt, m.tenant_id, m.customer_id, channel)
            if m.category == "marketing"
            else None
        )
        order_id = _order_id(m)
        extra: dict[str, Any] = {
            "kind": m.kind,
            "order_id": order_id,
            "order": claimed.orders.get((m.tenant_id, order_id)) if order_id else None,
        }
        if unsub:
            extra["unsubscribe_url"] = unsub
        ctx = context(
            store.customer_for_template(contact),
            m.variables,
            shop_name=tenant.shop_name if tenant else None,
            **extra,
        )
        try:
            rendered = render(template, ctx)
        except TemplateRenderError as exc:
            await self._fail(session, m, now, f"template_error: {exc}")
            return None
        text_body, html = rendered.text, rendered.html
        if unsub and unsub not in text_body:
            # Every marketing message carries a way out, whatever the template says.
            text_body += f"\n\nUnsubscribe: {unsub}" if channel == "email" else f" Stop: {unsub}"
        if unsub and html is not None and unsub not in html:
            html += f'\n<p style="font-size:12px"><a href="{unsub}">Unsubscribe</a></p>'
        if channel_row is not None and channel_row.rate_per_s:
            # Taken under the row lock of this claim: replicas share one budget.
            token = take(channel_row.rate_per_s, channel_row.tokens, channel_row.tokens_at, now)
            channel_row.tokens, channel_row.tokens_at = token.tokens, now
            if not token.ok:
                until = now + timedelta(seconds=token.wait_s)
                await self._set(session, m, now, "deferred", "rate_limited", until)
                return None
        payload: dict[str, Any] = {
            "type": "message.send",
            "id": m.id,
            "request_id": m.request_id,
            "customer_id": m.customer_id,
            "kind": m.kind,
            "category": m.category,
            "priority": m.priority,
            "channel": channel,
            "to": {"email": contact.email} if channel == "email" else {"phone": contact.phone},
            "first_name": contact.first_name,
            "subject": rendered.subject,
            "html": html,
            "text": text_body,
            "order_id": extra["order_id"],
            "unsubscribe_url": unsub,
            # The sender's name (email From): the request's shop, else the tenant's.
            "shop_name": m.variables.get("shop_name") or (tenant.shop_name if tenant else None),
            "attempt": m.attempts + 1,
        }
        if unsub and channel == "email":
            # RFC 8058 one-click unsubscribe, for the ESP to copy into the email headers.
            payload["headers"] = {
                "List-Unsubscribe": f"<{unsub}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            }
        m.attempts += 1
        m.last_attempt_at = now
        if m.category == "marketing" and m.counted_at is None:
            m.counted_at = now
        m.channel = channel
        lease = timedelta(seconds=self.s.request_timeout_s + self.s.lease_margin_s)
        await self._set(
            session,
            m,
            now,
            "queued",
            f"sending (attempt {m.attempts})",
            now + lease,
            decision="attempt",
        )
        return Job(
            message_id=m.id,
            tenant_id=m.tenant_id,
            attempt=m.attempts,
            channel=channel,
            route=route,
            payload=payload,
            traceparent=next((v for k, v in m.request_headers if k == "ce_traceparent"), None),
        )

    async def _set(
        self,
        session: AsyncSession,
        m: Message,
        now: datetime,
        status: str,
        reason: str | None,
        next_at: datetime | None = None,
        decision: str | None = None,
    ) -> None:
        # Record a decision only when it says something new: a message waiting out quiet
        # hours is re-judged once, not logged every poll.
        if (status, reason) != (m.status, m.reason) or decision is not None:
            await store.record(session, m.tenant_id, m.id, now, decision or status, reason)
        m.status, m.reason, m.updated_at = status, reason, now
        if next_at is not None:
            m.next_attempt_at = next_at

    async def _fail(self, session: AsyncSession, m: Message, now: datetime, reason: str) -> None:
        await self._set(session, m, now, "failed", reason)
        await session.flush()
        # Published before the transaction commits: if the broker is down the update
        # rolls back and the message is tried again after its lease, so the DLQ record
        # is never lost (it may repeat; its ce_id is the request's).
        headers = [(k, v.encode()) for k, v in m.request_headers]
        headers += [
            ("x-error", reason.encode()),
            ("x-error-type", b"MessageDeliveryFailed"),
            ("x-error-attempts", str(m.attempts).encode()),
            ("x-error-message-id", m.id.encode()),
        ]
        assert self.rt.producer is not None
        async with asyncio.timeout(self.s.dlq_send_timeout_s):
            await self.rt.producer.send_and_wait(
                DLQ_TOPIC, value=m.request_value, key=m.request_key, headers=headers
            )
        log.warning(
            "message failed", extra={"message_id": m.id, "tenant": m.tenant_id, "reason": reason}
        )

    # --- delivery --------------------------------------------------------------------

    async def deliver(self, job: Job) -> None:
        try:
            with continued(
                f"send {job.payload.get('kind')}",
                job.traceparent,
                kind=SpanKind.PRODUCER,
                attributes={
                    "afterglow.message.id": job.message_id,
                    "afterglow.message.kind": str(job.payload.get("kind")),
                    "afterglow.message.channel": job.channel,
                    "afterglow.message.provider": job.route.provider,
                    "afterglow.message.attempt": job.attempt,
                    "afterglow.tenant": job.tenant_id,
                },
            ):
                outcome = await self.send(job)
                self._release(job)
                await self.settle(job, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease expires and another pass retries it; nothing is lost.
            log.exception("settling a message failed", extra={"message_id": job.message_id})

    async def send(self, job: Job) -> Outcome:
        assert self.rt.http is not None and self._webhooks is not None
        senders = Senders(
            http=self.rt.http,
            webhooks=self._webhooks,
            allow_private=self.rt.settings.outbound_allow_private,
            timeout_s=self.s.request_timeout_s,
            now=self.rt.clock.now,
            smtp_pool=self.smtp_pool,
        )
        outcome = await channel_for(job, senders).send(job)
        result = "ok" if outcome.ok else "retry" if outcome.retryable else "failed"
        SENDS.labels(job.channel, job.route.provider, result).inc()
        return outcome

    async def _write_sent(self, sends: list[store.SentSend]) -> None:
        async with self._settling, self.rt.sessionmaker.begin() as session:
            await store.settle_sent(session, sends)

    async def settle(self, job: Job, outcome: Outcome) -> None:
        """Record a send's outcome: an accepted send with the others that ended
        meanwhile (``SentWriter``, one transaction for them all), any other outcome in
        a transaction of its own, inside the send's span (its statements are the
        send's in the message's trace). At most ``SETTLE_PARALLEL`` transactions at
        once: each holds a pooled connection, and with a transaction per send in flight
        (``concurrency`` of them) past the pool's size every settle opened a
        connection of its own."""
        now = self.rt.clock.now()
        if outcome.ok and not outcome.suppress:  # the common case: written with others
            await self._sent.settle((job.message_id, job.attempt, now, outcome.reason))
            return
        async with self._settling, self.rt.sessionmaker.begin() as session:
            m = await store.message_to_settle(session, job.message_id)
            if m is None or m.status != "queued" or m.attempts != job.attempt:
                return  # erased meanwhile, or a later lease took over
            if outcome.suppress:
                # The provider said the address is gone (or refused us): no later
                # message to it is tried, whichever customer record carries it.
                await store.suppress(
                    session,
                    m.tenant_id,
                    job.channel,
                    [(job.to, outcome.suppress, outcome.reason)],
                    source=job.route.provider,
                    at=now,
                )
            if outcome.ok:
                m.sent_at = now
                await self._set(session, m, now, "sent", None, decision="sent")
                await store.record(session, m.tenant_id, m.id, now, "delivered", outcome.reason)
                return
            if not outcome.retryable:
                await self._fail(session, m, now, f"rejected: {outcome.reason}")
                return
            if m.attempts >= self.s.max_attempts:
                await self._fail(session, m, now, f"{outcome.reason} after {m.attempts} attempts")
                return
            if outcome.retry_after_s is not None:
                delay = min(outcome.retry_after_s, self.s.retry_after_max_s)
            else:
                delay = policy.backoff_delay(
                    m.attempts, self.s.backoff_base_s, self.s.backoff_max_s
                )
            reason = f"retry: {outcome.reason} (attempt {m.attempts} of {self.s.max_attempts})"
            await self._set(
                session, m, now, "queued", reason, now + timedelta(seconds=delay), decision="retry"
            )
