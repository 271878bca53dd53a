"""The settings forms read into the bodies the services take (pure: no service)."""

from __future__ import annotations

import pytest

from afterglow.console import settings_forms as forms


def test_a_word_where_a_number_goes_is_sent_as_typed_for_the_service_to_name():
    assert forms.number(" 14 ") == 14
    assert forms.number("two") == "two"
    assert forms.decimal_number("2.5") == 2.5
    assert forms.decimal_number("nan") == "nan"  # NaN is not JSON


def test_an_empty_referral_field_is_left_out_so_the_service_keeps_it():
    body = forms.referral_settings({"share_base_url": "", "return_window_days": "7"})
    assert body == {"return_window_days": 7}


def test_a_channel_sends_only_its_providers_filled_fields():
    form = {"provider": "smtp", "host": "mx.example.com", "port": "2525", "password": ""}
    form |= {"account_sid": "AC00", "rate_per_s": ""}
    assert forms.channel("email", form) == {
        "provider": "smtp",
        "host": "mx.example.com",
        "port": 2525,
        "rate_per_s": None,
    }


def test_cleared_tier_rows_are_left_out_and_the_services_index_maps_back():
    form = {
        "tiers.0.name": "bronze",
        "tiers.0.threshold": "0",
        "tiers.0.multiplier": "1",
        "tiers.1.name": " ",
        "tiers.2.name": "gold",
        "tiers.2.threshold": "500",
        "tiers.2.multiplier": "",
    }
    tiers, rows = forms.tiers(form)
    assert tiers == [
        {"name": "bronze", "threshold": 0, "multiplier": "1"},
        {"name": "gold", "threshold": 500},
    ]
    assert forms.tier_field("tiers.1.threshold", rows) == "tiers.2.threshold"
    assert forms.tier_field("currency", rows) == "currency"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1\n", "not valid YAML at line 2"),
        ("just words", "must be a mapping"),
        ("a: &x [1]\nb: *x\n", "anchors and aliases"),
    ],
)
def test_what_is_not_a_program_is_refused_naming_the_rules(text: str, message: str):
    with pytest.raises(forms.FormError) as caught:
        forms.loyalty_rules(text)
    assert message in caught.value.message and caught.value.field == "rules"


def test_yaml_dates_are_sent_as_text():
    assert forms.loyalty_rules("since: 2026-01-01\n") == {"since": "2026-01-01"}


def test_the_reward_sends_only_its_kinds_values_with_the_amount_in_minor_units():
    form = {
        "referee_reward.kind": "fixed_amount",
        "referee_reward.percent": "15",
        "referee_reward.amount": "5",
        "referee_reward.currency": "kwd",
        "referee_reward.valid_days": "",
    }
    assert forms.referral_settings(form) == {
        "referee_reward": {"kind": "fixed_amount", "amount": 5000, "currency": "KWD"}
    }
    form["referee_reward.kind"] = "percentage"
    assert forms.referral_settings(form)["referee_reward"] == {"kind": "percentage", "percent": 15}


def test_the_default_kind_clears_the_reward_and_no_kind_keeps_it():
    assert forms.referral_settings({"referee_reward.kind": "default"}) == {"referee_reward": None}
    assert forms.referral_settings({"return_window_days": "7"}) == {"return_window_days": 7}


@pytest.mark.parametrize(("typed", "sent"), [("10", 1000), ("10.5", 1050), ("ten", "ten")])
def test_an_amount_is_sent_in_minor_units_or_as_typed(typed: str, sent: int | str):
    assert forms.minor_units(typed, "EUR") == sent


def test_an_amount_finer_than_the_currency_is_refused_at_the_amount():
    with pytest.raises(forms.FormError) as caught:
        forms.minor_units("100.5", "JPY")
    assert caught.value.field == "referee_reward.amount"
    assert "JPY has at most 0 decimals" in caught.value.message
