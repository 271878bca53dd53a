"""One realistic example of every catalog type: for docs, contract tests and fixtures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from afterglow.events import catalog as c

T = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
USD = "USD"


def sample_events() -> list[c.EventData]:
    money = c.Money(amount=12999, currency=USD)
    return [
        c.OrderPlaced(
            order_id="shopify:820982911946154508",
            order_number="#1001",
            platform="shopify",
            placed_at=T,
            customer=c.CustomerInfo(
                email="ada@example.com",
                first_name="Ada",
                timezone="America/New_York",
                accepts_marketing=True,
            ),
            total=money,
            subtotal=c.Money(amount=11999, currency=USD),
            line_items=[
                c.LineItem(
                    sku="MUG-01",
                    product_id="632910392",
                    title="Mug",
                    quantity=2,
                    unit_price=c.Money(amount=5999, currency=USD),
                )
            ],
            discount_codes=["WELCOME10"],
            referral_code="ADA7K2",
            shipping_country="US",
            shipping_address_hash="9f" * 32,
            customer_orders_count=1,
            platform_orders_count=0,
            shop_total=money,
            presentment_total=c.Money(amount=11050, currency="EUR"),
        ),
        c.OrderFulfilled(
            order_id="shopify:1", fulfilled_at=T, tracking_number="1Z999", carrier="UPS"
        ),
        c.OrderDelivered(order_id="shopify:1", delivered_at=T, reported_by="aftership"),
        c.OrderRefunded(
            order_id="shopify:1",
            refund_id="r1",
            refunded_at=T,
            amount=c.Money(amount=5525, currency="EUR"),
            order_total=money,
            full=False,
            shop_amount=c.Money(amount=5999, currency=USD),
            presentment_amount=c.Money(amount=5525, currency="EUR"),
        ),
        c.OrderCancelled(order_id="shopify:1", cancelled_at=T, reason="customer"),
        c.TicketOpened(
            ticket_id="zd:35436",
            helpdesk="zendesk",
            opened_at=T,
            subject="Where is my order?",
            priority="high",
            order_id="shopify:1",
        ),
        c.TicketUpdated(ticket_id="zd:35436", updated_at=T, status="pending"),
        c.TicketResolved(ticket_id="zd:35436", resolved_at=T),
        c.CustomerErasureRequested(requested_at=T, scope="customer", reason="customers/redact"),
        c.CustomerUnsubscribed(unsubscribed_at=T, channel="email"),
        c.ApiKeyIssued(
            key_id="a1b2c3d4e5f6", key_hash="0" * 64, scopes=["loyalty:read"], issued_at=T
        ),
        c.ApiKeyRevoked(key_id="a1b2c3d4e5f6", revoked_at=T),
        c.JourneyStageChanged(
            instance_id="ji-1",
            journey="default",
            version=1,
            from_stage="onboarding",
            to_stage="check_in",
            cause="timer:42",
            changed_at=T,
            order_id="shopify:1",
        ),
        c.MessageRequested(
            request_id="journey:ji-1:welcome",
            kind="welcome",
            category="transactional",
            priority="high",
            channel="email",
            variables={"first_name": "Ada"},
            order_id="shopify:1",
        ),
        c.SupportEscalationRequested(
            reason="detractor", requested_at=T, score=3, survey_id="s-1", comment="Arrived broken"
        ),
        c.SurveyRequested(
            request_id="journey:ji-1:survey", kind="nps", order_id="shopify:1", requested_at=T
        ),
        c.SurveySent(
            survey_id="s-1",
            request_id="journey:ji-1:survey",
            kind="nps",
            sent_at=T,
            expires_at=T,
            order_id="shopify:1",
        ),
        c.SurveyResponded(
            survey_id="s-1",
            kind="nps",
            score=10,
            band="promoter",
            comment="Love it",
            responded_at=T,
        ),
        c.ReviewRequested(request_id="journey:ji-1:review", order_id="shopify:1", requested_at=T),
        c.ReviewSubmitted(
            review_id="rv-1",
            rating=5,
            sku="MUG-01",
            order_id="shopify:1",
            verified=True,
            submitted_at=T,
        ),
        c.ReviewPublished(review_id="rv-1", rating=5, sku="MUG-01", published_at=T),
        c.PointsEarned(
            entry_id="le-1",
            points=130,
            status="pending",
            reason="order",
            order_id="shopify:1",
            available_at=T,
            balance_available=0,
            balance_pending=130,
            earned_at=T,
        ),
        c.PointsRedeemed(
            redemption_id="rd-1",
            points=500,
            reward_id="5-off",
            reward_code="AG-5OFF-X7Q2",
            balance_available=120,
            redeemed_at=T,
        ),
        c.PointsExpired(points=40, balance_available=80, expired_at=T),
        c.TierChanged(from_tier="bronze", to_tier="silver", direction="up", changed_at=T),
        c.ReferralInvited(invited_at=T, reason="promoter", score=10, journey_instance_id="ji-1"),
        c.ReferralCodeIssued(code="ADA7K2", share_url="https://shop.example/r/ADA7K2", issued_at=T),
        c.ReferralConverted(
            referral_id="rf-1",
            code="ADA7K2",
            referee_customer_id="c-2",
            order_id="shopify:2",
            order_total=money,
            converted_at=T,
        ),
        c.ReferralRejected(
            referral_id="rf-2",
            code="ADA7K2",
            reason="self_referral",
            referee_customer_id="c-1",
            order_id="shopify:3",
            rejected_at=T,
        ),
        c.DiscountRequested(
            code="AG-7QK2M9XW4P3R",
            title="Loyalty reward: $5 off",
            value_kind="fixed_amount",
            amount=money,
            starts_at=T,
            ends_at=T + timedelta(days=90),
            reference="rd-1",
            announce=c.MessageRequested(
                request_id="loyalty:reward_code:rd-1",
                kind="reward_code",
                category="transactional",
                variables={"reward_code": "AG-7QK2M9XW4P3R"},
            ),
        ),
        c.DiscountCreated(
            code="AG-7QK2M9XW4P3R",
            reference="rd-1",
            platform="shopify",
            platform_discount_id="gid://shopify/DiscountCodeNode/1057371",
            created_at=T,
        ),
        c.DiscountFailed(
            code="AG-7QK2M9XW4P3R", reference="rd-1", reason="no shop connection", failed_at=T
        ),
        c.DiscountRevokeRequested(code="AG-7QK2M9XW4P3R", reason="clawback", requested_at=T),
        c.DiscountRevoked(
            code="AG-7QK2M9XW4P3R", reference="rd-1", reason="clawback", revoked_at=T
        ),
        c.DiscountUsed(code="AG-7QK2M9XW4P3R", reference="rd-1", order_id="shopify:4", used_at=T),
    ]
