"""Redemptions at flash-sale rates: concurrent requests share one transaction.

``POST /v1/accounts/{customer}/redemptions`` hands its request to :class:`Redemptions`
and waits; a writer task (afterglow.kit.group_commit) takes every request waiting at
that moment and :func:`redeem_batch` applies them in ONE transaction, set-based, in
three statements whatever the batch (afterglow.loyalty.redemptions_store): the accounts
locked in (tenant, customer) order with their tenants' rules; then the accounts' lots
and the prior redemptions of the batch's Idempotency-Keys; the domain
(``Wallet.redeem``) runs in memory in arrival order, so a second request on an account
sees the first's balance; then lots, entries, balances, redemptions and events are
written with one statement. One transaction per request (about eight ORM statements)
capped the endpoint near 150 redemptions a second; a statement per table, near 900.

Each request gets its own answer, exactly as the one-transaction-per-request path
(``LoyaltyService.redeem``) gives it: 201 with the body, the stored body again for a
replayed key (``Idempotent-Replayed``), 404 no account, 422 unknown reward or a key
reused with another body, 409 not enough points. A business error is that request's
answer alone; the others commit. Two requests of one batch with the same key: the
second is the replay of the first, as if it had come after it.

``loyalty_redeem_group_commit = false`` serves each request in its own transaction
(today's path, kept for comparison in bench/loyalty/run.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from afterglow.events import CloudEvent, Outbox
from afterglow.kit.clock import Clock
from afterglow.kit.group_commit import GroupCommit
from afterglow.loyalty import domain, redemptions_store, store
from afterglow.loyalty.service import (
    InsufficientPointsError,
    LoyaltyService,
    key_reused,
    no_account,
    redemption_made,
    redemption_request_hash,
    unknown_reward,
)
from afterglow.loyalty.settings import LoyaltySettings

# (response body, replayed)
Redeemed = tuple[dict[str, Any], bool]


@dataclass(frozen=True)
class RedeemRequest:
    tenant: str
    customer: str
    reward_id: str
    idempotency_key: str

    @property
    def key(self) -> redemptions_store.RedemptionKey:
        return (self.tenant, self.customer, self.idempotency_key)


async def redeem_batch(
    session: AsyncSession, outbox: Outbox, requests: Sequence[RedeemRequest], now: datetime
) -> list[Redeemed | Exception]:
    """Apply ``requests`` in the caller's transaction, in order; one outcome each: the
    answer and whether it was replayed, or the error that request alone answers."""
    wallets, rules = await redemptions_store.lock_balances(
        session, ((r.tenant, r.customer) for r in requests), (r.tenant for r in requests)
    )
    prior = await redemptions_store.load_guarded(
        session, wallets, (r.key for r in requests if (r.tenant, r.customer) in wallets)
    )
    outcomes: list[Redeemed | Exception] = []
    touched: dict[redemptions_store.Key, domain.Wallet] = {}
    entries: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    events: list[CloudEvent[Any]] = []
    for r in requests:
        wallet = wallets.get((r.tenant, r.customer))
        if wallet is None:
            outcomes.append(no_account(r.customer))
            continue
        request_hash = redemption_request_hash(r.reward_id)
        if r.key in prior:
            # Stored before, or made earlier in this batch: the first answer again.
            first_hash, answer = prior[r.key]
            outcomes.append(key_reused() if first_hash != request_hash else (answer, True))
            continue
        program = rules[r.tenant]
        reward = program.reward(r.reward_id)
        if reward is None:
            outcomes.append(unknown_reward(r.reward_id))
            continue
        redemption_id = domain.new_id()
        try:
            spent = wallet.redeem(reward.points_price, now, redemption_id, f"reward {reward.id}")
        except domain.InsufficientPoints as exc:
            outcomes.append(InsufficientPointsError(str(exc), field="reward_id"))
            continue
        touched[(r.tenant, r.customer)] = wallet
        entries += [store.entry_row(r.tenant, r.customer, e) for e in spent]
        made = redemption_made(
            r.tenant, r.customer, program, reward, redemption_id, wallet, now, r.idempotency_key
        )
        rows.append(made.row(request_hash))
        events += made.events
        prior[r.key] = (request_hash, made.result)
        outcomes.append((made.result, False))
    lots = [
        store.lot_row(t, c, lot)
        for (t, c), wallet in touched.items()
        for lot in wallet.lots
        if lot.id in wallet.dirty
    ]
    await redemptions_store.write_batch(
        session,
        outbox,
        lots=lots,
        entries=entries,
        balances=touched,
        redemptions=rows,
        events=events,
        now=now,
    )
    return outcomes


class Redemptions:
    """The redemption use case as the route calls it: through the group commit, or
    (``loyalty_redeem_group_commit`` off) one transaction per request."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer_sessionmaker: async_sessionmaker[AsyncSession],
        loyalty: LoyaltyService,
        clock: Clock,
        settings: LoyaltySettings,
    ) -> None:
        """``writer_sessionmaker``: the batches' sessions (Runtime.writer_sessionmaker:
        the writers' pool, no ping per batch); ``sessionmaker``: one transaction per
        request."""
        self._sessionmaker = sessionmaker
        self._writer_sessionmaker = writer_sessionmaker
        self._loyalty = loyalty
        self._clock = clock
        self.grouped = settings.loyalty_redeem_group_commit
        self.writers = settings.loyalty_redeem_writers
        self.group: GroupCommit[RedeemRequest, Redeemed] = GroupCommit(
            self._apply,
            name="redemptions",
            max_waiting=settings.loyalty_redeem_max_waiting,
            max_batch=settings.loyalty_redeem_max_batch,
            retry_after_s=settings.loyalty_redeem_retry_after_s,
        )

    async def redeem(self, request: RedeemRequest) -> Redeemed:
        """The answer once committed, and whether it was replayed; or the request's
        error raised (404, 409, 422; 503 with Retry-After when overloaded)."""
        if self.grouped:
            return await self.group.submit(request)
        async with self._sessionmaker.begin() as session:
            return await self._loyalty.redeem(
                session,
                request.tenant,
                request.customer,
                request.reward_id,
                request.idempotency_key,
                self._clock.now(),
            )

    async def _apply(self, requests: Sequence[RedeemRequest]) -> list[Redeemed | Exception]:
        async with self._writer_sessionmaker.begin() as session:
            return await redeem_batch(session, self._loyalty.outbox, requests, self._clock.now())
