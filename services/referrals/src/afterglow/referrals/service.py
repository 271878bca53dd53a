"""Use cases shared by the event handlers, the API and the confirmation worker.

Everything here runs inside the caller's transaction (the consumer's inbox transaction
or the request's session) and adds the events it causes to the outbox in that same
transaction; nothing here commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events.catalog import (
    MessageRequested,
    Money,
    OrderCancelled,
    OrderPlaced,
    OrderRefunded,
    ReferralCodeIssued,
    ReferralConverted,
    ReferralRejected,
)
from afterglow.events.privacy import is_pseudonym
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


class CodeCollision(Exception):
    """Every attempt at a fresh code collided: the code space of the tenant is crowded."""


@dataclass(frozen=True)
class Attribution:
    referral: Referral
    created: bool


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

    async def lock_codes(
        self,
        session: AsyncSession,
        codes: set[tuple[str, str]],
        advocates: set[tuple[str, str]],
    ) -> None:
        """Lock, with one statement and in one order (tenant, then code id), every code a
        batch may lock: those its orders carry (``codes``: tenant and raw code) and
        those of the advocates it invites. Attributing locks its code, then the order;
        two batches from different partitions that took one code each, then wanted the
        other's, deadlocked (and the whole batch was retried)."""
        wanted = {
            (t, domain.normalize_code(c))
            for t, c in codes
            if domain.is_code_shaped(domain.normalize_code(c))
        }
        await store.lock_codes(session, wanted, advocates)

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
        referee = domain.Identity(
            customer_id=order.customer_id,
            email_hashes=frozenset([order.email_hash] if order.email_hash else []),
            phone_hashes=frozenset([order.phone_hash] if order.phone_hash else []),
            address_hashes=frozenset(
                [order.shipping_address_hash] if order.shipping_address_hash else []
            ),
        )
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
        state = {"accept": "pending", "hold": "held", "reject": "rejected"}[decision.outcome]
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
        await self.outbox.add(
            session,
            self._event(
                rewards.referee_discount(
                    referral.referee_reward_code, referral.id, self.clock.now(), announce, reward
                ),
                tenant_id=referral.tenant_id,
                subject=referral.referee_customer_id,
                id=derived_event_id(SOURCE, "referee_reward", referral.id),
            ),
        )

    async def _emit_rejected(
        self, session: AsyncSession, referral: Referral, reason: str, detail: str | None
    ) -> None:
        await self.outbox.add(
            session,
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
            ),
        )
        if referral.referee_reward_code:
            # The friend's code was issued with the conversion: it goes with it.
            await self.outbox.add(
                session,
                self._event(
                    rewards.clawback(referral.referee_reward_code, self.clock.now()),
                    tenant_id=referral.tenant_id,
                    subject=referral.referee_customer_id,
                    id=derived_event_id(SOURCE, "referee_reward_clawback", referral.id),
                ),
            )

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
