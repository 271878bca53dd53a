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
