import pytest

from afterglow.kit import standard_webhooks as sw

# The reference example of the Standard Webhooks specification.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


class TestStandardWebhooks:
    def test_matches_the_reference_vector(self):
        assert sw.sign(SECRET, MSG_ID, TS, BODY) == EXPECTED

    def test_receiver_accepts_the_signed_headers(self):
        headers = sw.signed_headers(SECRET, MSG_ID, TS, BODY)
        assert sw.verify_headers(SECRET, headers, BODY, TS)

    def test_rejects_a_changed_body_id_or_secret(self):
        headers = sw.signed_headers(SECRET, MSG_ID, TS, BODY)
        assert not sw.verify_headers(SECRET, headers, BODY + b" ", TS)
        assert not sw.verify_headers(SECRET, {**headers, "webhook-id": "msg_other"}, BODY, TS)
        assert not sw.verify_headers("whsec_" + "A" * 32, headers, BODY, TS)

    def test_rejects_stale_and_future_timestamps(self):
        headers = sw.signed_headers(SECRET, MSG_ID, TS, BODY)
        assert not sw.verify_headers(SECRET, headers, BODY, TS + 301)
        assert not sw.verify_headers(SECRET, headers, BODY, TS - 301)
        assert sw.verify_headers(SECRET, headers, BODY, TS + 299)

    def test_any_of_several_signatures_and_secrets_during_rotation(self):
        new = "whsec_" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJC"
        header = f"v1,bm9wZQ== {sw.sign(new, MSG_ID, TS, BODY)}"
        assert sw.verify([SECRET, new], MSG_ID, str(TS), header, BODY, TS)
        assert not sw.verify([SECRET], MSG_ID, str(TS), header, BODY, TS)

    def test_missing_parts_fail_closed(self):
        assert not sw.verify([SECRET], None, str(TS), EXPECTED, BODY, TS)
        assert not sw.verify([SECRET], MSG_ID, "not-a-number", EXPECTED, BODY, TS)
        assert not sw.verify([SECRET], MSG_ID, str(TS), None, BODY, TS)
        assert not sw.verify([SECRET], MSG_ID, str(TS), "v2,whatever", BODY, TS)


class TestHostileTimestamps:
    @pytest.mark.parametrize("stamp", ["\u00b2", "9" * 5000, "\uff11\uff12", " ", "-1"])
    def test_a_timestamp_that_is_not_ascii_digits_is_refused_not_raised(self, stamp):
        assert not sw.verify_headers(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            {"webhook-id": "m1", "webhook-timestamp": stamp, "webhook-signature": "v1,x"},
            b"{}",
            1_700_000_000,
        )
