"""The referrals consumer applies every poll as one transaction: orders of every
partition carry an advocate's code, and an attribution holds its code's row lock to the
commit, so a transaction per partition only queued on those rows (ReferralsSettings)."""

from __future__ import annotations

from afterglow.referrals.settings import ReferralsSettings


class TestConsumerSettings:
    def test_a_full_poll_is_tried_as_one_transaction(self):
        settings = ReferralsSettings()
        assert settings.consumer_coalesce_records >= settings.consumer_max_records

    def test_the_environment_can_still_set_it(self, monkeypatch):
        monkeypatch.setenv("CONSUMER_COALESCE_RECORDS", "0")
        assert ReferralsSettings().consumer_coalesce_records == 0
