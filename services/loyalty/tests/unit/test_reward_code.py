"""Reward codes: what the customer types at checkout, unguessable and unambiguous."""

from __future__ import annotations

import re
from collections import Counter

from afterglow.loyalty.service import reward_code

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I, O, 0, 1: none read as another


def test_a_code_is_twelve_characters_of_the_unambiguous_alphabet():
    for _ in range(200):
        assert re.fullmatch(f"AG-[{ALPHABET}]{{12}}", reward_code())


def test_every_character_of_the_alphabet_is_drawn_about_as_often():
    drawn = Counter("".join(reward_code()[3:] for _ in range(4_000)))  # 48,000 characters
    assert set(drawn) == set(ALPHABET)
    # 1,500 expected each; a character drawn twice as often (a skewed mapping from
    # random bytes) is far outside these bounds, chance alone never is (> 10 sigma).
    assert all(1_100 < n < 1_900 for n in drawn.values()), drawn


def test_codes_do_not_repeat():
    assert len({reward_code() for _ in range(10_000)}) == 10_000
