"""The channels' pure parts: SMS segments and numbers, provider signatures and events,
the MIME message, the token bucket."""

from __future__ import annotations

import base64
import email
import email.policy
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from afterglow.journeys.messaging.channels import provider_events as pe
from afterglow.journeys.messaging.channels.mime import build_email
from afterglow.journeys.messaging.channels.rate import take
from afterglow.journeys.messaging.channels.sms_text import e164, segments

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class TestSegments:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("a" * 160, (1, "GSM-7")),
            ("a" * 161, (2, "GSM-7")),
            ("a" * 306, (2, "GSM-7")),
            ("a" * 307, (3, "GSM-7")),
            ("€" * 80, (1, "GSM-7")),  # extension characters take two septets
            ("€" * 81, (2, "GSM-7")),
            ("ł" * 70, (1, "UCS-2")),
            ("ł" * 71, (2, "UCS-2")),
            ("a" * 69 + "👋", (2, "UCS-2")),  # the emoji is two UTF-16 units
            ("ł" * 134, (2, "UCS-2")),
            ("ł" * 135, (3, "UCS-2")),
        ],
    )
    def test_counts_segments_by_encoding(self, text, expected):
        assert segments(text) == expected


class TestE164:
    def test_normalises_valid_numbers_and_refuses_others(self):
        assert e164("+1 (415) 555-0123") == "+14155550123"
        assert e164("015112345678", "DE") == "+4915112345678"
        assert e164("015112345678") is None  # no region, no +
        assert e164("+1234") is None and e164("") is None and e164("call me") is None


class TestTwilioSignature:
    # twilio-python's own test vectors (tests/unit/test_request_validator.py).
    URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
    PARAMS = {
        "CallSid": "CA1234567890ABCDE",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
        "Caller": "+14158675309",
    }

    def test_matches_twilios_vector(self):
        assert pe.twilio_signature("12345", self.URL, self.PARAMS.items()) == (
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        )

    def test_repeated_names_are_sorted_by_value(self):
        params = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
        assert pe.twilio_signature("12345", self.URL, params) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="

    def test_verifies_with_or_without_the_default_port(self):
        good = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        assert pe.verify_twilio("12345", self.URL, self.PARAMS.items(), good)
        with_port = self.URL.replace(".com", ".com:443")
        assert pe.verify_twilio("12345", with_port, self.PARAMS.items(), good)
        assert not pe.verify_twilio("12346", self.URL, self.PARAMS.items(), good)
        tampered = {**self.PARAMS, "Digits": "1235"}
        assert not pe.verify_twilio("12345", self.URL, tampered.items(), good)
        assert not pe.verify_twilio("12345", self.URL, self.PARAMS.items(), None)

    @pytest.mark.parametrize(
        ("body", "word"),
        [("STOP", "stop"), (" stop. ", "stop"), ("Stop All", "stop"), ("unsubscribe", "stop"),
         ("start", "start"), ("UNSTOP", "start"), ("help", "help"), ("stop it please", None),
         ("", None)],
    )  # fmt: skip
    def test_keywords(self, body, word):
        assert pe.keyword(body) == word


class TestSendgridEvents:
    def test_signature_covers_timestamp_and_body(self):
        key = ec.generate_private_key(ec.SECP256R1())
        public = base64.b64encode(
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode()
        body = b'[{"email":"a@x.test","event":"bounce"}]'
        sig = base64.b64encode(key.sign(b"1700000000" + body, ec.ECDSA(hashes.SHA256()))).decode()
        assert pe.sendgrid_key_ok(public)
        assert pe.verify_sendgrid(public, sig, "1700000000", body)
        assert not pe.verify_sendgrid(public, sig, "1700000001", body)
        assert not pe.verify_sendgrid(public, sig, "1700000000", body + b" ")
        assert not pe.verify_sendgrid(public, "not base64!", "1700000000", body)
        assert not pe.sendgrid_key_ok("bm9wZQ==")

    def test_hard_bounces_and_complaints_only(self):
        batch = [
            {"email": "a@x.test", "event": "bounce", "type": "bounce", "reason": "550 gone"},
            {"email": "b@x.test", "event": "bounce", "type": "blocked"},  # soft
            {"email": "c@x.test", "event": "spamreport"},
            {"email": "d@x.test", "event": "delivered"},
            {"event": "bounce"},
            "junk",
        ]
        assert pe.sendgrid_events(batch) == [
            pe.AddressEvent("a@x.test", "hard_bounce", "550 gone"),
            pe.AddressEvent("c@x.test", "complaint", "spam report"),
        ]
        assert pe.sendgrid_events({"not": "a list"}) == []

    def test_postmark_records(self):
        hard = {"RecordType": "Bounce", "Type": "HardBounce", "Email": "a@x.test"}
        soft = {"RecordType": "Bounce", "Type": "SoftBounce", "Email": "a@x.test"}
        spam = {"RecordType": "SpamComplaint", "Email": "b@x.test"}
        assert [e.reason for e in pe.postmark_events(hard)] == ["hard_bounce"]
        assert pe.postmark_events(soft) == []
        assert [e.reason for e in pe.postmark_events(spam)] == ["complaint"]

    def test_basic_auth(self):
        header = "Basic " + base64.b64encode(b"pm:secret").decode()
        assert pe.basic_auth_ok(header, "pm:secret")
        assert not pe.basic_auth_ok(header, "pm:other")
        assert not pe.basic_auth_ok("Bearer x", "pm:secret")
        assert not pe.basic_auth_ok(None, "pm:secret")


class TestMime:
    def test_message_id_is_the_message_s_and_headers_are_set(self):
        msg = build_email(
            message_id="msg-1",
            from_email="hello@Lumen.test",
            from_name="Lumen, Inc.",
            to="ana@example.com",
            subject="Hej ✓",
            text="plain",
            html="<p>rich</p>",
            reply_to="care@lumen.test",
            headers={"List-Unsubscribe": "<https://x.test/u/1>"},
            date=T0,
        )
        parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
        assert parsed["Message-ID"] == "<msg-1@lumen.test>"
        assert parsed["From"] == '"Lumen, Inc." <hello@Lumen.test>'
        assert parsed["Subject"] == "Hej ✓" and parsed["List-Unsubscribe"] == "<https://x.test/u/1>"
        assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
        assert b"\r\n" in msg.as_bytes()  # SMTP line endings


class TestTokenBucket:
    def test_burst_then_rate(self):
        first = take(2.0, 0.0, None, T0)  # a fresh bucket is full (one second's worth)
        assert first.ok and first.tokens == 1.0
        second = take(2.0, first.tokens, T0, T0)
        assert second.ok and second.tokens == 0.0
        third = take(2.0, second.tokens, T0, T0)
        assert not third.ok and third.wait_s == 0.5
        later = take(2.0, third.tokens, T0, T0 + timedelta(seconds=0.5))
        assert later.ok

    def test_never_holds_more_than_a_second(self):
        idle = take(14.0, 0.0, T0, T0 + timedelta(hours=1))
        assert idle.ok and idle.tokens == 13.0
        slow = take(0.5, 0.0, T0, T0 + timedelta(hours=1))
        assert slow.ok and slow.tokens == 0.0  # at least one token, never more than burst
