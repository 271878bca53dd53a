"""Use cases shared by the event handlers, the API and the confirmation worker.

Everything here runs inside the caller's transaction (the consumer's inbox transaction
or the request's session) and adds the events it causes to the outbox in that same
transaction; nothing here commits.
"""

from __future__ import annotations

import functools
import uuid
from bisect import bisect_right, insort
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events.catalog import (
    MessageRequested,
    Money,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    ReferralCodeIssued,
    ReferralConverted,
    ReferralRejected,
)
from afterglow.events.privacy import is_pseudonym, pseudonym
from afterglow.kit.clock import Clock
from afterglow.referrals import domain, rewards, store
from afterglow.referrals.models import Code, Order, Referral, TenantSettings
from afterglow.referrals.settings import ReferralsSettings

SOURCE = "referrals"
CODE_ATTEMPTS = 8
# Customers pseudonymized per statement in a tenant-wide erasure (two binds each).
ERASE_BATCH = 1000
# The columns of tenant_settings a tenant sets; each null one falls back to the default.
TENANT_SETTINGS = ("share_base_url", "return_window_days", "attribution_window_days")
# The columns of the referee's reward: written together (reward_columns), read as one
# domain.RefereeReward.
REWARD_COLUMNS = (
    "referee_reward_kind",
    "referee_percent_off",
    "referee_amount",
    "referee_currency",
    "referee_valid_days",
)


def reward_columns(reward: domain.RefereeReward | None) -> dict[str, Any]:
    """A tenant's reward as its columns; None: every column null (the default reward)."""
    if reward is None:
        return dict.fromkeys(REWARD_COLUMNS)
    return {
        "referee_reward_kind": reward.kind,
        "referee_percent_off": reward.percent,
        "referee_amount": reward.amount,
        "referee_currency": reward.currency,
        "referee_valid_days": reward.valid_days,
    }


def reward_of(row: TenantSettings) -> domain.RefereeReward | None:
    """The tenant's own reward, or None when it chose none."""
    if row.referee_reward_kind is None:
        return None
    assert row.referee_reward_kind in domain.REWARD_KINDS  # the table's check constraint
    return domain.RefereeReward(
        kind=row.referee_reward_kind,
        percent=row.referee_percent_off,
        amount=row.referee_amount,
        currency=row.referee_currency,
        valid_days=row.referee_valid_days or domain.DEFAULT_REFEREE_REWARD.valid_days,
    )


# The order lifecycle events ReferralService.orders_changed applies in sets.
Lifecycle = OrderFulfilled | OrderDelivered | OrderRefunded | OrderCancelled


# The state a conversion is recorded in, by the outcome of its checks.
_STATE_OF = {"accept": "pending", "hold": "held", "reject": "rejected"}


class CodeCollision(Exception):
    """Every attempt at a fresh code collided: the code space of the tenant is crowded."""


@dataclass(frozen=True)
class Attribution:
    referral: Referral
    created: bool


class BatchCodes:
    """The referral codes one consumer batch may touch, read once and locked once.

    Attributing an order holds its code's row lock until the transaction commits: the
    advocate cap and the velocity limit count the code's conversions, and two
    transactions counting at once could both slip under a limit. Taken at the start
    of the batch, the lock was held for the batch's whole length, and as an advocate's
    code is carried by orders in every partition, the partitions' batches queued on
    the same rows and ran one after the other (order.placed at ~1,750/s, a third of
    the time waiting on the codes' lock).

    So a batch of orders reads its codes without a lock (:meth:`read`), does what does
    not depend on them being held, and locks them (:meth:`lock`) just before the
    conversions the limits count are read: every code of the batch in one statement,
    in (tenant, code id) order, the one order the codes are ever locked in, so two
    batches never wait on each other in a cycle. Whoever locks compares what the
    lock read with what it decided from (orders_placed). A batch that changes codes
    one event at a time (an invitation, an erasure) locks them all at its start, as
    before (handlers.apply)."""

    def __init__(self, wanted: set[tuple[str, str]], advocates: set[tuple[str, str]]) -> None:
        self.wanted = wanted  # (tenant, normalized code)
        self.advocates = advocates  # (tenant, customer): the codes of these advocates too
        self.locked = False
        self._active: dict[tuple[str, str], Any] | None = None

    async def read(self, session: AsyncSession) -> dict[tuple[str, str], Any]:
        """The codes that attribute, by (tenant, normalized code): the lock's read when
        the batch holds it, else read without a lock (once per batch)."""
        if self._active is None:
            self._active = await store.active_codes_named(session, self.wanted)
        return self._active

    async def lock(self, session: AsyncSession) -> dict[tuple[str, str], Any]:
        """Lock every code of the batch (once) and return those that attribute, as
        the lock read them."""
        if not self.locked:
            self._active = await store.lock_codes(session, self.wanted, self.advocates)
            self.locked = True
        assert self._active is not None
        return self._active

    def forget(self) -> None:
        """An event applied alone may have changed a code (an invitation issues one, an
        erasure deactivates one): the next run reads and locks them again."""
        self._active = None
        self.locked = False


class ReferralService:
    def __init__(self, settings: ReferralsSettings, outbox: Outbox, clock: Clock) -> None:
        self.settings = settings
        self.outbox = outbox
        self.clock = clock
        self.limits = domain.Limits(
            attribution_days=settings.referrals_attribution_days,
            advocate_cap=settings.referrals_advocate_cap,
            advocate_cap_days=settings.referrals_advocate_cap_days,
            velocity_limit=settings.referrals_velocity_limit,
            velocity_window=timedelta(minutes=settings.referrals_velocity_window_minutes),
        )

    def _event(self, data: Any, *, tenant_id: str, subject: str, id: str) -> CloudEvent[Any]:
        return CloudEvent.new(
            data, tenant_id=tenant_id, subject=subject, source=SOURCE, id=id, time=self.clock.now()
        )

    # --- settings -----------------------------------------------------------------

    def defaults(self, tenant_id: str) -> domain.Policy:
        """What a tenant that set nothing gets: the service's settings."""
        s = self.settings
        return domain.Policy(
            share_base_url=s.referrals_share_base_url or self.own_share_base_url(tenant_id),
            return_window_days=s.referrals_return_window_days,
            attribution_window_days=s.referrals_attribution_days,
        )

    def own_share_base_url(self, tenant_id: str) -> str:
        """This service's share link for a tenant (``GET /r/{tenant}``, which sends the
        friend on to the shop): the default when neither the tenant nor the operator
        named a share URL."""
        base = self.settings.public_base_url.rstrip("/")
        return f"{base}/r/{quote(tenant_id, safe='')}"

    def _policy_of(self, tenant_id: str, row: TenantSettings | None) -> domain.Policy:
        own: dict[str, Any] = {}
        if row is not None:
            own = {n: getattr(row, n) for n in TENANT_SETTINGS}
            own["referee_reward"] = reward_of(row)
        return self.defaults(tenant_id).overridden_by(own)

    async def policies(self, session: AsyncSession, tenants: set[str]) -> dict[str, domain.Policy]:
        """:meth:`policy` of several tenants with one query."""
        settings = await store.tenant_settings_of(session, tenants)
        return {t: self._policy_of(t, settings.get(t)) for t in tenants}

    async def policy(self, session: AsyncSession, tenant_id: str) -> domain.Policy:
        return self._policy_of(tenant_id, await store.tenant_settings(session, tenant_id))

    async def landing_url(self, session: AsyncSession, tenant_id: str) -> str | None:
        """Where a friend who followed this service's share link goes: the shop URL the
        tenant set (links issued before it did still come here), else the operator's
        REFERRALS_SHOP_URL; None when neither is known."""
        row = await store.tenant_settings(session, tenant_id)
        own = row.share_base_url if row is not None else None
        if own and not own.startswith(self.own_share_base_url(tenant_id)):
            return own
        return self.settings.referrals_shop_url

    async def share_url(self, session: AsyncSession, tenant_id: str, code: str) -> str:
        return domain.share_url((await self.policy(session, tenant_id)).share_base_url, code)

    async def update_settings(
        self, session: AsyncSession, tenant_id: str, changes: dict[str, Any]
    ) -> domain.Policy:
        """Set the named fields (``None``: back to the service default), leave the others.
        An upsert, so two first writes of one tenant cannot collide on its row."""
        unknown = set(changes) - {*TENANT_SETTINGS, *REWARD_COLUMNS}
        if unknown:
            raise ValueError(f"not tenant settings: {sorted(unknown)}")
        if not changes:
            return await self.policy(session, tenant_id)
        row = await store.upsert_tenant_settings(session, tenant_id, changes, self.clock.now())
        return self._policy_of(tenant_id, row)

    # --- codes --------------------------------------------------------------------

    def batch_codes(
        self, codes: set[tuple[str, str]], advocates: set[tuple[str, str]]
    ) -> BatchCodes:
        """The codes a batch may touch: those its orders carry (``codes``: tenant and
        raw code) and those of the advocates it invites (``advocates``: tenant and
        customer). See :class:`BatchCodes`."""
        wanted = {
            (t, domain.normalize_code(c))
            for t, c in codes
            if domain.is_code_shaped(domain.normalize_code(c))
        }
        return BatchCodes(wanted, advocates)

    async def code_of_advocate(
        self, session: AsyncSession, tenant_id: str, advocate: str
    ) -> Code | None:
        return await store.code_of_advocate(session, tenant_id, advocate)

    async def find_code(self, session: AsyncSession, tenant_id: str, raw: str) -> Code | None:
        code = domain.normalize_code(raw)
        if not domain.is_code_shaped(code):
            return None
        return await store.active_code(session, tenant_id, code)

    async def issue_code(
        self,
        session: AsyncSession,
        tenant_id: str,
        advocate: str,
        *,
        invited_at: datetime,
        source: str,
        cause_id: str,
        send_invite: bool,
    ) -> tuple[Code, bool]:
        """The advocate's code, created on first call. Idempotent per (tenant, advocate):
        both the advocate and the code are unique per tenant in the database, so two
        concurrent issuers cannot create two codes, and a colliding random code is
        simply drawn again."""
        created = False
        for _ in range(CODE_ATTEMPTS):
            existing = await self.code_of_advocate(session, tenant_id, advocate)
            if existing is not None:
                code = existing
                break
            candidate = domain.generate_code(self.settings.referrals_code_length)
            inserted = await store.insert_code_if_free(
                session,
                tenant_id=tenant_id,
                advocate=advocate,
                code=candidate,
                source=source,
                issued_at=self.clock.now(),
                invited_at=invited_at,
                invitations=1 if source == "invited" else 0,
            )
            if inserted is not None:
                code = inserted
                created = True
                break
            # Either another transaction issued this advocate's code (found by the next
            # select) or the random code is taken (a new one is drawn).
        else:
            raise CodeCollision(f"no free code after {CODE_ATTEMPTS} attempts")

        if not created and source == "invited":
            # A new invitation re-opens the attribution window from today.
            code.invitations += 1
            code.invited_at = max(code.invited_at, invited_at)
        url = await self.share_url(session, tenant_id, code.code)
        events: list[CloudEvent[Any]] = []
        if created:
            events.append(
                self._event(
                    ReferralCodeIssued(code=code.code, share_url=url, issued_at=code.issued_at),
                    tenant_id=tenant_id,
                    subject=advocate,
                    id=derived_event_id(SOURCE, "code_issued", code.id),
                )
            )
        if send_invite and code.invite_requested_at is None:
            code.invite_requested_at = self.clock.now()
            events.append(
                self._event(
                    MessageRequested(
                        request_id=f"referral_invite:{tenant_id}:{code.code}",
                        kind="referral_invite",
                        variables={"referral_code": code.code, "referral_url": url},
                    ),
                    tenant_id=tenant_id,
                    subject=advocate,
                    id=derived_event_id(SOURCE, "invite_message", code.id),
                )
            )
        await session.flush()
        await self.outbox.add(session, *events)
        return code, created

    # --- orders -------------------------------------------------------------------

    async def remember_order(
        self, session: AsyncSession, tenant_id: str, customer_id: str, data: OrderPlaced
    ) -> Order:
        return await store.remember_order(session, tenant_id, customer_id, data)

    async def code_for_order(
        self, session: AsyncSession, tenant_id: str, data: OrderPlaced
    ) -> tuple[Code, str] | None:
        """The referral code an order carries: the landing-site parameter first, then
        any discount code that is one of ours."""
        if data.referral_code:
            found = await self.find_code(session, tenant_id, data.referral_code)
            if found is not None:
                return found, "referral_code"
        candidates = {domain.normalize_code(c) for c in data.discount_codes}
        candidates = {c for c in candidates if domain.is_code_shaped(c)}
        if candidates:
            found = await store.first_active_code_among(session, tenant_id, candidates)
            if found is not None:
                return found, "discount_code"
        return None

    async def _identity(
        self, session: AsyncSession, tenant_id: str, customer: str
    ) -> domain.Identity:
        rows = await store.contact_hashes_of_customer(session, tenant_id, customer)
        return domain.Identity(
            customer_id=customer,
            email_hashes=frozenset(r.email_hash for r in rows if r.email_hash),
            phone_hashes=frozenset(r.phone_hash for r in rows if r.phone_hash),
            address_hashes=frozenset(
                r.shipping_address_hash for r in rows if r.shipping_address_hash
            ),
        )

    async def _facts(
        self,
        session: AsyncSession,
        code: Code,
        order: Order,
        platform_orders_count: int | None,
    ) -> domain.Facts:
        t = code.tenant_id
        earlier = await store.count_earlier_orders(
            session,
            t,
            customer_id=order.customer_id,
            email_hash=order.email_hash,
            order_id=order.order_id,
            placed_at=order.placed_at,
        )
        in_period = await store.count_live_referrals_of_advocate(
            session,
            t,
            code.advocate_customer_id,
            other_than_order=order.order_id,
            placed_after=order.placed_at - timedelta(days=self.limits.advocate_cap_days),
            placed_until=order.placed_at,
        )
        recent = await store.count_live_referrals_of_code(
            session,
            t,
            code.id,
            other_than_order=order.order_id,
            placed_after=order.placed_at - self.limits.velocity_window,
            placed_until=order.placed_at,
        )
        referee = referee_identity(order)
        return domain.Facts(
            invited_at=code.invited_at,
            placed_at=order.placed_at,
            advocate=await self._identity(session, t, code.advocate_customer_id),
            referee=referee,
            platform_orders_count=platform_orders_count,
            earlier_orders_seen=earlier or 0,
            advocate_conversions_in_period=in_period or 0,
            recent_from_code=recent or 0,
            refunded_at=order.refunded_at,
            cancelled_at=order.cancelled_at,
        )

    async def attribute(
        self,
        session: AsyncSession,
        code: Code,
        order: Order,
        *,
        via: str,
        platform_orders_count: int | None,
    ) -> Attribution:
        """Decide and record one order's attribution to a code; emits what it causes."""
        existing = await self.referral_for_order(session, code.tenant_id, order.order_id)
        if existing is not None:
            return Attribution(existing, created=False)
        # Serialize attributions per code: the cap and velocity counts must see each
        # other, or two orders processed at once could both slip under a limit.
        await store.lock_code(session, code.id)
        # Then the order, as its fulfilment, refund and cancellation handlers do before
        # touching its referral: whichever commits first, the other sees its effect.
        order = await self._locked_order(session, order.tenant_id, order.order_id) or order
        policy = await self.policy(session, code.tenant_id)
        decision = domain.evaluate(
            await self._facts(session, code, order, platform_orders_count),
            policy.limits(self.limits),
        )
        now = self.clock.now()
        state = _STATE_OF[decision.outcome]
        # An order fulfilled before its attribution starts its return window at once.
        fulfilled_at = order.fulfilled_at if state != "rejected" else None
        referral_id = str(uuid.uuid4())
        referral = await store.insert_referral_if_new(
            session,
            id=referral_id,
            tenant_id=code.tenant_id,
            code_id=code.id,
            code=code.code,
            advocate_customer_id=code.advocate_customer_id,
            referee_customer_id=order.customer_id,
            order_id=order.order_id,
            order_total=order.total_amount,
            currency=order.currency,
            placed_at=order.placed_at,
            via=via,
            state=state,
            reason=decision.reason,
            detail=decision.detail,
            attributed_at=now,
            decided_at=now if state == "rejected" else None,
            fulfilled_at=fulfilled_at,
            confirm_due_at=policy.confirmation_due(fulfilled_at) if fulfilled_at else None,
            refunded_amount=order.refunded_amount,
        )
        if referral is None:  # the same order attributed concurrently
            again = await self.referral_for_order(session, code.tenant_id, order.order_id)
            assert again is not None
            return Attribution(again, created=False)
        if state == "rejected":
            assert decision.reason is not None
            await self._emit_rejected(session, referral, decision.reason, decision.detail)
        elif state == "pending":
            await self._reward_referee(session, referral, policy.referee_reward)
        return Attribution(referral, created=True)

    async def orders_placed(
        self,
        session: AsyncSession,
        events: Sequence[tuple[str, str, OrderPlaced]],
        codes: BatchCodes | None = None,
        policies: dict[str, domain.Policy] | None = None,
    ) -> None:
        """A run of consecutive order.placed events, each (tenant, subject, data), in
        partition order, applied in sets with the outcome of applying them one by one
        (handlers.placed): every order remembered with one insert (the first event of an
        order wins), then each referred order attributed in event order from state read
        with one query per table, each attribution seeing the orders of the events up to
        its own and the conversions decided before it, as it would one by one.

        Locks: the run's referred orders in (tenant, order id) order, then (when any
        order is attributed and the batch has not yet) every code of the batch
        (``codes``, :class:`BatchCodes`), just before the conversions the cap and the
        velocity limit count are read: the codes are held for the end of the batch
        only, not for its whole length. ``codes``: the batch's; None: the run's own.
        ``policies``: the tenants' policies read earlier in the transaction (no event
        changes them), else they are read here."""
        first: dict[tuple[str, str], int] = {}
        rows = []
        for i, (tenant, subject, data) in enumerate(events):
            key = (tenant, data.order_id)
            if key not in first:
                first[key] = i
                rows.append(store.order_row(tenant, subject, data))
        created = await store.remember_orders(session, rows)
        # From which event on an order exists: one this run created is not there yet for
        # the events before it (one by one, an earlier order's checks never saw it).
        since = {key: first[key] for key in created}

        wanted = self._carried_codes(events)
        names = {c for cs in wanted for c in cs[1]}
        if codes is None:
            codes = BatchCodes(names, set())
        active = await codes.read(session)
        todo = await self._todo(session, events, rows, created, wanted, active)
        if not todo:
            return
        # The orders of the people involved are not guarded by the codes' lock (other
        # partitions write them whatever it holds): read before it is taken.
        seen = await self._seen(session, todo, since)
        if not codes.locked:
            locked = await codes.lock(session)
            if _attributing(locked, names) != _attributing(active, names):
                # A code changed between the read and the lock (deactivated, issued, its
                # advocate erased): decide from what the lock read, as if it came first.
                todo = await self._todo(session, events, rows, created, wanted, locked)
                if not todo:
                    return
                seen = await self._seen(session, todo, since)
        await self._attribute_all(session, events, todo, seen, policies)

    async def _todo(
        self,
        session: AsyncSession,
        events: Sequence[tuple[str, str, OrderPlaced]],
        rows: list[dict[str, Any]],
        created: set[tuple[str, str]],
        wanted: list[tuple[str | None, set[tuple[str, str]]]],
        codes: dict[tuple[str, str], Any],
    ) -> list[tuple[int, Any, str, Any]]:
        """The orders of the run to attribute, in event order, each (event index, code
        row, via, order row), given the codes that attribute (``codes``). Reads only:
        run again when the codes turn out changed under their lock."""
        found: list[tuple[int, Any, str]] = []  # (event index, code row, via)
        for i, (referral_code, discounts) in enumerate(wanted):
            picked = self._pick_code(events[i][0], referral_code, discounts, codes)
            if picked is not None:
                found.append((i, *picked))
        if not found:
            return []
        keys = {(events[i][0], events[i][2].order_id) for i, _, _ in found}
        # An order this run created is known (its row is what was inserted) and locked
        # (the inserter holds it), and has no referral (a referral is only ever made for
        # an order already recorded, and orders are never deleted): only the orders seen
        # before are read, locked, and looked up among the referrals. Two statements
        # fewer when every order is new, as most are.
        seen_before = keys - created
        orders: dict[tuple[str, str], Any] = await store.locked_orders(session, seen_before)
        attributed = await store.referred_orders(session, seen_before)
        for row in rows:
            key = (row["tenant_id"], row["order_id"])
            if key in keys and key in created:
                orders[key] = store.created_order(row)
        todo = []
        for i, code, via in found:
            key = (events[i][0], events[i][2].order_id)
            if key in attributed:
                continue  # one referral per order: a repeat, or attributed before
            attributed.add(key)
            todo.append((i, code, via, orders[key]))
        return todo

    def _carried_codes(
        self, events: Sequence[tuple[str, str, OrderPlaced]]
    ) -> list[tuple[str | None, set[tuple[str, str]]]]:
        """Per event: its referral code (normalized, if code-shaped) and every code it
        may be attributed by, as (tenant, code); a historical order carries none."""
        out: list[tuple[str | None, set[tuple[str, str]]]] = []
        for tenant, _, data in events:
            if data.historical:
                out.append((None, set()))
                continue
            raw = [data.referral_code] if data.referral_code else []
            shaped = {
                c
                for c in (domain.normalize_code(r) for r in [*raw, *data.discount_codes])
                if domain.is_code_shaped(c)
            }
            ref = domain.normalize_code(raw[0]) if raw else None
            out.append((ref if ref in shaped else None, {(tenant, c) for c in shaped}))
        return out

    @staticmethod
    def _pick_code(
        tenant: str,
        referral_code: str | None,
        carried: set[tuple[str, str]],
        active: dict[tuple[str, str], Any],
    ) -> tuple[Any, str] | None:
        """As code_for_order: the referral code if it attributes, else the first of the
        discount codes that attributes, in code order."""
        if referral_code is not None and (tenant, referral_code) in active:
            return active[(tenant, referral_code)], "referral_code"
        ours = sorted(c for t, c in carried if (t, c) in active and c != referral_code)
        if ours:
            return active[(tenant, ours[0])], "discount_code"
        return None

    async def _seen(
        self,
        session: AsyncSession,
        todo: list[tuple[int, Any, str, Any]],
        since: dict[tuple[str, str], int],
    ) -> _Seen:
        """The orders of the referees and advocates of ``todo`` (customer id or
        pseudonym, or the referee's email), as each event of the run sees them."""
        people: set[tuple[str, str]] = set()
        emails: set[tuple[str, str]] = set()
        for _, code, _, order in todo:
            t = order.tenant_id
            people |= {(t, c) for c in _with_pseudonym(t, order.customer_id)}
            people.add((t, code.advocate_customer_id))
            if order.email_hash:
                emails.add((t, order.email_hash))
        return _Seen(await store.orders_of_people(session, people, emails), since)

    async def _attribute_all(
        self,
        session: AsyncSession,
        events: Sequence[tuple[str, str, OrderPlaced]],
        todo: list[tuple[int, Any, str, Any]],
        seen: _Seen,
        policies: dict[str, domain.Policy] | None,
    ) -> None:
        """Decide the attributions (event index, code row, via, locked order row) in
        order, insert them with one statement and their events with one more. The
        codes are locked: the conversions read here are what the cap and the velocity
        limit count, and no other transaction adds one to these codes meanwhile."""
        tenants = {o.tenant_id for _, _, _, o in todo}
        if policies is None or not tenants <= policies.keys():
            policies = await self.policies(session, tenants)
        advocates: set[tuple[str, str]] = set()
        for _, code, _, _ in todo:
            t = code.tenant_id
            advocates |= {(t, a) for a in _with_pseudonym(t, code.advocate_customer_id)}
        first_placed = min(o.placed_at for _, _, _, o in todo)
        live = _Live(
            await store.live_referrals_of(
                session,
                advocates,
                {(c.tenant_id, c.id) for _, c, _, _ in todo},
                # Each count over its own window: the cap's 30 days of the advocates,
                # the velocity's hour of the codes.
                advocates_after=first_placed - timedelta(days=self.limits.advocate_cap_days),
                codes_after=first_placed - self.limits.velocity_window,
                placed_until=max(o.placed_at for _, _, _, o in todo),
            )
        )
        now = self.clock.now()
        cap_window = timedelta(days=self.limits.advocate_cap_days)
        velocity_window = self.limits.velocity_window
        limits = {t: policies[t].limits(self.limits) for t in tenants}
        referrals: list[dict[str, Any]] = []
        for i, code, via, order in todo:
            t = order.tenant_id
            facts = domain.Facts(
                invited_at=code.invited_at,
                placed_at=order.placed_at,
                advocate=seen.identity(t, code.advocate_customer_id, i),
                referee=referee_identity(order),
                platform_orders_count=events[i][2].customer_orders_count,
                earlier_orders_seen=seen.earlier(order, i),
                advocate_conversions_in_period=live.of_advocate(
                    t, code.advocate_customer_id, order, order.placed_at - cap_window
                ),
                recent_from_code=live.of_code(t, code.id, order, order.placed_at - velocity_window),
                refunded_at=order.refunded_at,
                cancelled_at=order.cancelled_at,
            )
            policy = policies[t]
            decision = domain.evaluate(facts, limits[t])
            state = _STATE_OF[decision.outcome]
            fulfilled_at = order.fulfilled_at if state != "rejected" else None
            row = {
                "id": str(uuid.uuid4()),
                "tenant_id": t,
                "code_id": code.id,
                "code": code.code,
                "advocate_customer_id": code.advocate_customer_id,
                "referee_customer_id": order.customer_id,
                "order_id": order.order_id,
                "order_total": order.total_amount,
                "currency": order.currency,
                "placed_at": order.placed_at,
                "via": via,
                "state": state,
                "reason": decision.reason,
                "detail": decision.detail,
                "referee_reward_code": (
                    "RF" + domain.generate_code(8) if state == "pending" else None
                ),
                "attributed_at": now,
                "decided_at": now if state == "rejected" else None,
                "fulfilled_at": fulfilled_at,
                "confirm_due_at": policy.confirmation_due(fulfilled_at) if fulfilled_at else None,
                "refunded_amount": order.refunded_amount,
            }
            referrals.append(row)
            if state != "rejected":
                live.add(row)
        inserted = await store.insert_referrals_if_new(session, referrals)
        caused: list[CloudEvent[Any]] = []
        for row in referrals:
            if row["id"] not in inserted:
                continue  # the order was attributed concurrently: that one stands
            # The events read it: a namespace, not a transient ORM object (whose
            # instrumented construction was a tenth of the run's Python).
            referral = SimpleNamespace(**row)
            if row["state"] == "rejected":
                caused += self._rejected_events(referral, row["reason"], row["detail"])
            elif row["state"] == "pending":
                reward = policies[row["tenant_id"]].referee_reward
                caused.append(self._referee_reward_event(referral, reward))
        await self.outbox.add(session, *caused)

    async def referral_for_order(
        self, session: AsyncSession, tenant_id: str, order_id: str
    ) -> Referral | None:
        return await store.referral_for_order(session, tenant_id, order_id)

    async def _reward_referee(
        self, session: AsyncSession, referral: Referral, reward: domain.RefereeReward
    ) -> None:
        """The referee's half of a double-sided reward (the tenant's, from the policy the
        caller already read): a discount code for their next order, created in the
        tenant's shop by orders-ingest, which then sends the message announcing it
        (rewards.py)."""
        referral.referee_reward_code = "RF" + domain.generate_code(8)
        await session.flush()
        await self.outbox.add(session, self._referee_reward_event(referral, reward))

    def _referee_reward_event(
        self, referral: Referral | SimpleNamespace, reward: domain.RefereeReward
    ) -> CloudEvent[Any]:
        assert referral.referee_reward_code is not None
        announce = MessageRequested(
            request_id=f"referee_reward:{referral.tenant_id}:{referral.id}",
            kind="referee_reward",
            variables={
                "reward_code": referral.referee_reward_code,
                "referral_code": referral.code,
                # For a template that names the gift ("15% off", "5.00 EUR off").
                "reward": reward.label(),
            },
            order_id=referral.order_id,
        )
        return self._event(
            rewards.referee_discount(
                referral.referee_reward_code, referral.id, self.clock.now(), announce, reward
            ),
            tenant_id=referral.tenant_id,
            subject=referral.referee_customer_id,
            id=derived_event_id(SOURCE, "referee_reward", referral.id),
        )

    async def _emit_rejected(
        self, session: AsyncSession, referral: Referral, reason: str, detail: str | None
    ) -> None:
        await self.outbox.add(session, *self._rejected_events(referral, reason, detail))

    def _rejected_events(
        self, referral: Referral | SimpleNamespace, reason: str, detail: str | None
    ) -> list[CloudEvent[Any]]:
        events = [
            self._event(
                ReferralRejected(
                    referral_id=referral.id,
                    code=referral.code,
                    reason=reason,
                    detail=detail,
                    referee_customer_id=referral.referee_customer_id,
                    order_id=referral.order_id,
                    rejected_at=referral.decided_at or self.clock.now(),
                ),
                tenant_id=referral.tenant_id,
                subject=referral.advocate_customer_id,
                id=derived_event_id(SOURCE, "rejected", referral.id),
            )
        ]
        if referral.referee_reward_code:
            # The friend's code was issued with the conversion: it goes with it.
            events.append(
                self._event(
                    rewards.clawback(referral.referee_reward_code, self.clock.now()),
                    tenant_id=referral.tenant_id,
                    subject=referral.referee_customer_id,
                    id=derived_event_id(SOURCE, "referee_reward_clawback", referral.id),
                )
            )
        return events

    # --- lifecycle after attribution ------------------------------------------------
    #
    # Each of these records the event on the order first (locking its row), then on the
    # order's referral if there is one yet: an attribution made later reads the order.

    async def _locked_order(
        self, session: AsyncSession, tenant_id: str, order_id: str
    ) -> Order | None:
        return await store.locked_order(session, tenant_id, order_id)

    async def order_fulfilled(
        self, session: AsyncSession, tenant_id: str, order_id: str, fulfilled_at: datetime
    ) -> None:
        """order.fulfilled, and order.delivered (a delivered order was fulfilled, even when
        the platform never said so). The first of them starts the return window, whose
        length is the tenant's setting now: a due time once set is not recomputed."""
        order = await self._locked_order(session, tenant_id, order_id)
        if order is not None and order.fulfilled_at is None:
            order.fulfilled_at = fulfilled_at
            await session.flush()
        due = (await self.policy(session, tenant_id)).confirmation_due(fulfilled_at)
        await store.start_return_window(session, tenant_id, order_id, fulfilled_at, due)

    async def order_refunded(
        self, session: AsyncSession, tenant_id: str, data: OrderRefunded
    ) -> None:
        order = await self._locked_order(session, tenant_id, data.order_id)
        if order is not None:
            order.refunded_amount += data.amount.amount
            full = data.full or order.refunded_amount >= order.total_amount
            if full and order.refunded_at is None:
                order.refunded_at = data.refunded_at
            await session.flush()
        await self.reject_open(
            session,
            tenant_id,
            data.order_id,
            "refunded",
            f"refund {data.refund_id} inside the return window",
            data.refunded_at,
            refunded=data.amount.amount,
            full=data.full,
        )

    async def order_cancelled(
        self, session: AsyncSession, tenant_id: str, data: OrderCancelled
    ) -> None:
        order = await self._locked_order(session, tenant_id, data.order_id)
        if order is not None and order.cancelled_at is None:
            order.cancelled_at = data.cancelled_at
            await session.flush()
        await self.reject_open(
            session, tenant_id, data.order_id, "cancelled", data.reason, data.cancelled_at
        )

    async def orders_changed(
        self,
        session: AsyncSession,
        events: Sequence[tuple[str, Lifecycle]],
    ) -> None:
        """A run of consecutive order lifecycle events (fulfilled, delivered, refunded,
        cancelled), each (tenant, data), in partition order, applied in sets with the
        outcome of order_fulfilled, order_refunded and order_cancelled applied to each in
        order: the run's orders locked with one statement, then their open referrals
        with one more (the order the one-by-one path locks them in), the changes worked
        out in memory in event order, and each table written with one statement, each
        changed row once, with its final values."""
        keys = {(t, d.order_id) for t, d in events}
        locked = await store.locked_orders(session, keys)
        orders = {k: dict(r._mapping) for k, r in locked.items()}
        referrals = {
            k: dict(r._mapping)
            for k, r in (await store.locked_open_referrals(session, keys)).items()
        }
        policies = await self.policies(session, {t for t, _ in events})
        changed_orders: dict[tuple[str, str], dict[str, Any]] = {}
        changed_referrals: dict[tuple[str, str], dict[str, Any]] = {}
        caused: list[CloudEvent[Any]] = []
        for tenant, data in events:
            key = (tenant, data.order_id)
            order, referral = orders.get(key), referrals.get(key)
            if isinstance(data, OrderFulfilled | OrderDelivered):
                at = data.fulfilled_at if isinstance(data, OrderFulfilled) else data.delivered_at
                if order is not None and order["fulfilled_at"] is None:
                    order["fulfilled_at"] = at
                    changed_orders[key] = order
                # The first fulfilment starts the window (store.start_return_window).
                if referral is not None and referral["fulfilled_at"] is None:
                    referral["fulfilled_at"] = at
                    referral["confirm_due_at"] = policies[tenant].confirmation_due(at)
                    changed_referrals[key] = referral
                continue
            if isinstance(data, OrderRefunded):
                if order is not None:
                    order["refunded_amount"] += data.amount.amount
                    full = data.full or order["refunded_amount"] >= order["total_amount"]
                    if full and order["refunded_at"] is None:
                        order["refunded_at"] = data.refunded_at
                    changed_orders[key] = order
                rejected = _rejected_open(
                    referral,
                    "refunded",
                    f"refund {data.refund_id} inside the return window",
                    data.refunded_at,
                    refunded=data.amount.amount,
                    full=data.full,
                )
            else:
                if order is not None and order["cancelled_at"] is None:
                    order["cancelled_at"] = data.cancelled_at
                    changed_orders[key] = order
                rejected = _rejected_open(referral, "cancelled", data.reason, data.cancelled_at)
            if referral is not None:
                changed_referrals[key] = referral
            if rejected:
                assert referral is not None
                # No longer open: a later event of the run finds no referral to change.
                del referrals[key]
                caused += self._rejected_events(
                    SimpleNamespace(**referral), referral["reason"], referral["detail"]
                )
        await store.update_orders(session, list(changed_orders.values()))
        await store.update_referrals(session, list(changed_referrals.values()))
        await self.outbox.add(session, *caused)

    async def reject_open(
        self,
        session: AsyncSession,
        tenant_id: str,
        order_id: str,
        reason: str,
        detail: str | None,
        at: datetime,
        refunded: int = 0,
        full: bool = True,
    ) -> Referral | None:
        """Reject an order's conversion that is not confirmed yet. A partial refund only
        accumulates; the conversion is rejected once refunds reach the order total. A
        confirmed conversion stays confirmed: its return window had passed."""
        referral = await store.locked_open_referral(session, tenant_id, order_id)
        if referral is None:
            return None
        referral.refunded_amount += refunded
        if not full and referral.refunded_amount < referral.order_total:
            return None
        referral.state = "rejected"
        referral.reason = reason
        referral.detail = detail
        referral.decided_at = at
        await session.flush()
        await self._emit_rejected(session, referral, reason, detail)
        return referral

    async def confirm_due(self, session: AsyncSession, limit: int) -> int:
        """Confirm conversions whose return window has passed; the advocate's reward is
        ``referral.converted``. Rows are claimed with SKIP LOCKED so replicas share."""
        now = self.clock.now()
        due = await store.claim_due_referrals(session, now, limit)
        for referral in due:
            referral.state = "confirmed"
            referral.decided_at = now
            await self.outbox.add(
                session,
                self._event(
                    ReferralConverted(
                        referral_id=referral.id,
                        code=referral.code,
                        referee_customer_id=referral.referee_customer_id,
                        order_id=referral.order_id,
                        order_total=Money(amount=referral.order_total, currency=referral.currency),
                        converted_at=now,
                    ),
                    tenant_id=referral.tenant_id,
                    subject=referral.advocate_customer_id,
                    id=derived_event_id(SOURCE, "converted", referral.id),
                ),
            )
        return len(due)

    async def review(
        self, session: AsyncSession, referral: Referral, approve: bool, note: str | None
    ) -> None:
        now = self.clock.now()
        if approve:
            referral.state = "pending"
            referral.detail = (referral.detail or "") + (
                f"; approved: {note}" if note else "; approved"
            )
            await session.flush()
            reward = (await self.policy(session, referral.tenant_id)).referee_reward
            await self._reward_referee(session, referral, reward)
        else:
            referral.state = "rejected"
            referral.decided_at = now
            referral.detail = note or referral.detail
            await session.flush()
            await self._emit_rejected(session, referral, "velocity_review", referral.detail)

    async def erase(self, session: AsyncSession, tenant_id: str, customer: str | None) -> None:
        """GDPR erasure: the customer's id becomes a pseudonym in every row, order hashes
        go and the advocate's code stops attributing. Rows stay, so every count and
        metric stays; the pseudonym is one per customer, so distinct counts stay too.
        ``customer=None`` erases every customer of the tenant."""
        customers = (
            [customer] if customer is not None else await self._customers(session, tenant_id)
        )
        for start in range(0, len(customers), ERASE_BATCH):
            await self._pseudonymize(session, tenant_id, customers[start : start + ERASE_BATCH])

    async def _customers(self, session: AsyncSession, tenant_id: str) -> list[str]:
        """Every customer id of the tenant not pseudonymized yet."""
        return [
            c for c in await store.customer_ids_of_tenant(session, tenant_id) if not is_pseudonym(c)
        ]

    async def _pseudonymize(
        self, session: AsyncSession, tenant_id: str, customers: list[str]
    ) -> None:
        await store.pseudonymize(session, tenant_id, customers, self.clock.now())


def _rejected_open(
    referral: dict[str, Any] | None,
    reason: str,
    detail: str | None,
    at: datetime,
    refunded: int = 0,
    full: bool = True,
) -> bool:
    """ReferralService.reject_open on an open referral read as a dict, in memory: True
    when it is rejected now (the caller emits the rejection)."""
    if referral is None:
        return False
    referral["refunded_amount"] += refunded
    if not full and referral["refunded_amount"] < referral["order_total"]:
        return False
    referral.update(state="rejected", reason=reason, detail=detail, decided_at=at)
    return True


def _attributing(
    codes: dict[tuple[str, str], Any], names: set[tuple[str, str]]
) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Of ``codes`` (tenant, normalized code -> row), those named ``names``, as plain
    values: two reads of the codes compare equal when a run would decide the same."""
    return {k: tuple(r) for k, r in codes.items() if k in names}


def referee_identity(order: Any) -> domain.Identity:
    """The referee as the order shows them (an Order, or a row of the orders table)."""
    return domain.Identity(
        customer_id=order.customer_id,
        email_hashes=frozenset([order.email_hash] if order.email_hash else []),
        phone_hashes=frozenset([order.phone_hash] if order.phone_hash else []),
        address_hashes=frozenset(
            [order.shipping_address_hash] if order.shipping_address_hash else []
        ),
    )


@functools.lru_cache(maxsize=65_536)  # a sha256 each; an attribution asks several times
def _with_pseudonym(tenant_id: str, customer: str) -> tuple[str, str]:
    """A customer's id and the pseudonym an erasure gave it (store._is_customer)."""
    return customer, pseudonym(tenant_id, customer)


class _Seen:
    """The orders an attribution batch read (store.orders_of_people), answered as each
    event saw them one by one: an order this run created exists from its event on."""

    def __init__(self, rows: Sequence[Any], since: dict[tuple[str, str], int]) -> None:
        self._since = since
        self._by_customer: dict[tuple[str, str], list[Any]] = defaultdict(list)
        self._by_email: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for r in rows:
            self._by_customer[(r.tenant_id, r.customer_id)].append(r)
            if r.email_hash:
                self._by_email[(r.tenant_id, r.email_hash)].append(r)

    def _visible(self, row: Any, at: int) -> bool:
        return self._since.get((row.tenant_id, row.order_id), -1) <= at

    def earlier(self, order: Any, at: int) -> int:
        """As store.count_earlier_orders: the person's other orders placed before."""
        t = order.tenant_id
        rows = [r for c in _with_pseudonym(t, order.customer_id) for r in self._by_customer[(t, c)]]
        if order.email_hash:
            rows += self._by_email[(t, order.email_hash)]
        return len(
            {
                r.order_id
                for r in rows
                if r.order_id != order.order_id
                and r.placed_at < order.placed_at
                and self._visible(r, at)
            }
        )

    def identity(self, tenant_id: str, customer: str, at: int) -> domain.Identity:
        """As ReferralService._identity: every contact the customer's orders carry."""
        rows = [r for r in self._by_customer[(tenant_id, customer)] if self._visible(r, at)]
        return domain.Identity(
            customer_id=customer,
            email_hashes=frozenset(r.email_hash for r in rows if r.email_hash),
            phone_hashes=frozenset(r.phone_hash for r in rows if r.phone_hash),
            address_hashes=frozenset(
                r.shipping_address_hash for r in rows if r.shipping_address_hash
            ),
        )


class _Placed:
    """The placing times of one advocate's (or one code's) live conversions, sorted, so
    that a count over a window is two bisections instead of a pass over all of them (a
    batch counts each of its orders against every conversion of its advocate)."""

    __slots__ = ("_at", "_of_order")

    def __init__(self) -> None:
        self._at: list[datetime] = []
        self._of_order: dict[str, list[datetime]] = defaultdict(list)

    def add(self, order_id: str, at: datetime) -> None:
        insort(self._at, at)
        self._of_order[order_id].append(at)

    def count(self, after: datetime, until: datetime, other_than: str) -> int:
        """Those placed in (``after``, ``until``], the order ``other_than``'s excepted."""
        n = bisect_right(self._at, until) - bisect_right(self._at, after)
        own = self._of_order.get(other_than)
        if own:
            n -= sum(1 for at in own if after < at <= until)
        return n


_NONE_PLACED = _Placed()


class _Live:
    """The live conversions an attribution batch read (store.live_referrals_of), plus
    those it decided so far: what the cap and velocity checks count."""

    def __init__(self, rows: Sequence[Any]) -> None:
        self._by_advocate: dict[tuple[str, str], _Placed] = defaultdict(_Placed)
        self._by_code: dict[tuple[str, str], _Placed] = defaultdict(_Placed)
        # Unpacked in store.live_referrals_of's column order: a batch reads thousands.
        for tenant, order_id, advocate, code_id, at in rows:
            self._put(tenant, advocate, code_id, order_id, at)

    def _put(self, tenant: str, advocate: str, code_id: str, order_id: str, at: datetime) -> None:
        self._by_advocate[(tenant, advocate)].add(order_id, at)
        self._by_code[(tenant, code_id)].add(order_id, at)

    def add(self, row: dict[str, Any]) -> None:
        self._put(
            row["tenant_id"],
            row["advocate_customer_id"],
            row["code_id"],
            row["order_id"],
            row["placed_at"],
        )

    def of_advocate(self, tenant: str, advocate: str, order: Any, after: datetime) -> int:
        """As store.count_live_referrals_of_advocate (pseudonymized ones too)."""
        by_advocate, own, until = self._by_advocate, order.order_id, order.placed_at
        return sum(
            by_advocate.get((tenant, a), _NONE_PLACED).count(after, until, own)
            for a in _with_pseudonym(tenant, advocate)
        )

    def of_code(self, tenant: str, code_id: str, order: Any, after: datetime) -> int:
        """As store.count_live_referrals_of_code."""
        placed = self._by_code.get((tenant, code_id), _NONE_PLACED)
        return placed.count(after, order.placed_at, order.order_id)
