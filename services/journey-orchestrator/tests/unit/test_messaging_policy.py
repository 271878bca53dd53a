"""Pure messaging rules: consent, quiet hours, caps, retries, tokens, signatures."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afterglow.events.catalog import MESSAGE_VARIABLES
from afterglow.journeys.messaging import policy
from afterglow.journeys.messaging.policy import ContactFacts, MessageFacts, PolicySettings, decide
from afterglow.journeys.messaging.templates import (
    DEFAULT_KINDS,
    SAMPLE_CUSTOMER,
    SAMPLE_VARIABLES,
    Template,
    TemplateRenderError,
    all_kinds,
    context,
    default_template,
    render,
    validate,
)

NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
RULES = PolicySettings()


def contact(**kw):
    base = dict(
        email="a@example.com",
        phone=None,
        timezone="UTC",
        accepts_marketing=None,
        email_unsubscribed=False,
        sms_unsubscribed=False,
        erased=False,
    )
    base.update(kw)
    return ContactFacts(**base)


def message(**kw):
    base = dict(
        category="marketing", priority="normal", channel=None, not_before=None, created_at=NOON
    )
    base.update(kw)
    return MessageFacts(**base)


class TestConsent:
    def test_unsubscribed_contact_gets_no_marketing(self):
        d = decide(NOON, message(), contact(email_unsubscribed=True), RULES, [])
        assert (d.action, d.reason) == ("suppress", "unsubscribed")

    def test_transactional_is_exempt_from_unsubscribe(self):
        d = decide(
            NOON, message(category="transactional"), contact(email_unsubscribed=True), RULES, []
        )
        assert (d.action, d.channel) == ("send", "email")

    def test_declined_marketing_is_suppressed(self):
        d = decide(NOON, message(), contact(accepts_marketing=False), RULES, [])
        assert d.reason == "no_marketing_consent"

    def test_sms_marketing_needs_explicit_consent(self):
        c = contact(email=None, phone="+15555550100")
        assert decide(NOON, message(), c, RULES, []).reason == "no_sms_marketing_consent"
        ok = decide(
            NOON, message(), contact(email=None, phone="+1555", accepts_marketing=True), RULES, []
        )
        assert (ok.action, ok.channel) == ("send", "sms")

    def test_missing_contact_waits_then_suppresses(self):
        assert decide(NOON, message(), None, RULES, []).reason == "waiting_for_contact"
        late = NOON + RULES.contact_wait + timedelta(seconds=1)
        assert decide(late, message(), None, RULES, []).reason == "no_address"

    def test_erased_contact_is_suppressed(self):
        assert (
            decide(NOON, message(category="transactional"), contact(erased=True), RULES, []).reason
            == "erased"
        )


class TestSuppressedAddresses:
    def test_hard_bounce_stops_every_message(self):
        c = contact(suppressed={"email": "hard_bounce"})
        for category in ("marketing", "transactional"):
            d = decide(NOON, message(category=category), c, RULES, [])
            assert (d.action, d.reason) == ("suppress", "address_suppressed: hard_bounce")

    def test_complaint_and_stop_refuse_marketing_only(self):
        complained = contact(suppressed={"email": "complaint"})
        d = decide(NOON, message(), complained, RULES, [])
        assert (d.action, d.reason) == ("suppress", "address_suppressed: complaint")
        d = decide(NOON, message(category="transactional"), complained, RULES, [])
        assert d.action == "send"
        stopped = contact(
            email=None, phone="+14155550123", accepts_marketing=True, suppressed={"sms": "sms_stop"}
        )
        d = decide(NOON, message(channel="sms"), stopped, RULES, [])
        assert d.reason == "address_suppressed: sms_stop"

    def test_another_channel_s_suppression_does_not_count(self):
        c = contact(phone="+14155550123", suppressed={"sms": "sms_stop"})
        assert decide(NOON, message(), c, RULES, []).action == "send"


class TestQuietHours:
    def test_defers_to_eight_local_time(self):
        # 03:00 UTC is 22:00 in New York (EST): quiet until 08:00 EST = 13:00 UTC.
        now = datetime(2026, 1, 6, 3, 0, tzinfo=UTC)
        d = decide(now, message(), contact(timezone="America/New_York"), RULES, [])
        assert (d.action, d.reason, d.until) == (
            "defer",
            "quiet_hours",
            datetime(2026, 1, 6, 13, 0, tzinfo=UTC),
        )

    def test_applies_to_transactional_too(self):
        now = datetime(2026, 1, 6, 23, 30, tzinfo=UTC)
        d = decide(now, message(category="transactional"), contact(), RULES, [])
        assert d.until == datetime(2026, 1, 7, 8, 0, tzinfo=UTC)

    def test_unknown_timezone_falls_back_to_tenant_default(self):
        rules = PolicySettings(default_timezone="Europe/Paris")
        now = datetime(2026, 1, 6, 20, 30, tzinfo=UTC)  # 21:30 Paris
        assert (
            decide(now, message(), contact(timezone="Mars/Olympus"), rules, []).reason
            == "quiet_hours"
        )

    @given(
        st.datetimes(
            min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
        ),
        st.sampled_from(
            ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Sydney"]
        ),
    )
    def test_deferral_lands_outside_quiet_hours_within_a_day(self, now, tz):
        end = policy.quiet_hours_end(now, ZoneInfo(tz), time(21), time(8))
        if end is None:
            assert not policy.in_quiet_hours(now.astimezone(ZoneInfo(tz)).time(), time(21), time(8))
        else:
            assert now < end <= now + timedelta(hours=12)
            assert not policy.in_quiet_hours(end.astimezone(ZoneInfo(tz)).time(), time(21), time(8))


class TestFrequencyCap:
    counted = [NOON - timedelta(days=6), NOON - timedelta(days=2), NOON - timedelta(hours=1)]

    def test_low_priority_over_cap_is_dropped(self):
        d = decide(NOON, message(priority="low"), contact(), RULES, self.counted)
        assert (d.action, d.reason) == ("suppress", "frequency_cap")

    def test_normal_and_high_defer_until_a_slot_frees(self):
        for priority in ("normal", "high"):
            d = decide(NOON, message(priority=priority), contact(), RULES, self.counted)
            assert (d.action, d.reason, d.until) == (
                "defer",
                "frequency_cap",
                NOON + timedelta(days=1),
            )

    def test_old_messages_do_not_count_and_transactional_is_uncapped(self):
        old = [NOON - timedelta(days=8)] * 5
        assert decide(NOON, message(), contact(), RULES, old).action == "send"
        assert (
            decide(NOON, message(category="transactional"), contact(), RULES, self.counted).action
            == "send"
        )

    def test_not_before_wins(self):
        later = NOON + timedelta(hours=2)
        assert decide(NOON, message(not_before=later), contact(), RULES, []).until == later


class TestRetries:
    @given(st.integers(1, 30), st.randoms(use_true_random=False))
    def test_backoff_grows_and_stays_bounded(self, attempt, rng):
        d = policy.backoff_delay(attempt, 10, 3600, rng)
        step = min(3600, 10 * 2 ** (attempt - 1))
        assert step / 2 <= d <= step

    def test_retry_after_seconds_and_http_date(self):
        assert policy.parse_retry_after("120", NOON) == 120
        assert policy.parse_retry_after("Mon, 05 Jan 2026 12:01:30 GMT", NOON) == 90
        assert policy.parse_retry_after("soon", NOON) is None

    def test_retryable_statuses(self):
        assert policy.is_retryable_status(500) and policy.is_retryable_status(429)
        assert not policy.is_retryable_status(400) and not policy.is_retryable_status(410)


class TestTokensAndSignatures:
    def test_unsubscribe_token_round_trip_and_forgery(self):
        token = policy.sign_unsubscribe("s3cret", "t-1", "c-1", "email")
        assert policy.verify_unsubscribe("s3cret", token) == ("t-1", "c-1", "email")
        assert policy.verify_unsubscribe("other", token) is None
        forged = (
            policy.sign_unsubscribe("s3cret", "t-1", "c-2", "email").split(".")[0]
            + "."
            + token.split(".")[1]
        )
        assert policy.verify_unsubscribe("s3cret", forged) is None


class TestTemplates:
    def test_every_kind_has_defaults_that_render(self):
        assert set(all_kinds()) - set(DEFAULT_KINDS) == {"custom"}
        for kind in DEFAULT_KINDS:
            for channel in ("email", "sms"):
                validate(default_template(kind, channel), kind)

    def test_defaults_need_only_the_variables_the_catalog_promises(self):
        """The contract with the services that request messages: a default template
        renders with exactly MESSAGE_VARIABLES[kind] and what messaging adds itself."""
        for kind in DEFAULT_KINDS:
            promised = {k: SAMPLE_VARIABLES[k] for k in MESSAGE_VARIABLES[kind]}
            ctx = context(SAMPLE_CUSTOMER, promised, unsubscribe_url="https://x.test/u", kind=kind)
            for channel in ("email", "sms"):
                render(default_template(kind, channel), ctx)

    def test_html_is_escaped_and_text_is_not(self):
        t = Template(
            channel="email",
            subject="Hi {{ first_name }}",
            html="<p>{{ first_name }}</p>",
            text="{{ first_name }}",
        )
        out = render(t, {"first_name": "<b>Jo</b>"})
        assert out.html == "<p>&lt;b&gt;Jo&lt;/b&gt;</p>" and out.text == "<b>Jo</b>"

    def test_sandbox_blocks_internals(self):
        with pytest.raises(TemplateRenderError) as err:
            render(Template(channel="sms", text="{{ ''.__class__.__mro__ }}"), {})
        assert err.value.part == "text"

    def test_errors_name_the_line_and_the_variable(self):
        with pytest.raises(TemplateRenderError) as err:
            validate(Template(channel="sms", text="ok\n{% if %}"), "welcome")
        assert err.value.line == 2 and "syntax error" in str(err.value)
        with pytest.raises(TemplateRenderError) as err:
            validate(Template(channel="sms", text="{{ no_such_thing }}"), "welcome")
        assert "no_such_thing" in str(err.value) and "undefined" in str(err.value)

    def test_order_may_be_missing_and_templates_must_say_what_then(self):
        unguarded = Template(channel="sms", text="Order {{ order.number }}")
        with pytest.raises(TemplateRenderError) as err:
            validate(unguarded, "check_in")
        assert "{% if order %}" in err.value.message
        guarded = Template(
            channel="sms",
            text="{% if order %}Order {{ order.number }}: {{ order.total }}"
            "{% for i in order.lines %} {{ i.quantity }}x {{ i.title }}{% endfor %}"
            "{% else %}Thanks{% endif %} ({{ customer.orders_count }} orders)",
        )
        out = validate(guarded, "check_in")
        assert out.text == "Order #1001: 59.90 EUR 2x Ceramic mug (3 orders)"

    def test_saving_checks_against_what_the_kind_is_sure_to_carry(self):
        needs_survey_url = Template(channel="sms", text="Tell us: {{ survey_url }}")
        validate(needs_survey_url, "survey_invite")  # the catalog promises survey_url
        with pytest.raises(TemplateRenderError) as err:
            validate(needs_survey_url, "check_in")  # ... but not to a check-in
        assert "survey_url" in err.value.message and "default('')" in err.value.message
        optional = Template(channel="sms", text="{{ survey_url | default('') }}")
        validate(optional, "check_in")
        # A template under a name of its own may be used by any kind: base context only.
        with pytest.raises(TemplateRenderError):
            validate(Template(channel="sms", text="{{ reward_code }}"), "spring-promo")
        assert set().union(*MESSAGE_VARIABLES.values()) <= SAMPLE_VARIABLES.keys()


class TestHostileRetryAfter:
    def test_a_unicode_digit_retry_after_is_ignored_not_raised(self):
        from datetime import UTC, datetime

        from afterglow.journeys.messaging.policy import parse_retry_after

        now = datetime(2026, 1, 1, tzinfo=UTC)
        assert parse_retry_after("\u00b2", now) is None
        assert parse_retry_after("30", now) == 30.0
