"""The erasure pseudonym every service uses (afterglow.events.privacy)."""

from __future__ import annotations

from afterglow.events.privacy import is_pseudonym, pseudonym


def test_one_alias_per_customer_per_tenant() -> None:
    a = pseudonym("t1", "cust-42")
    assert a == pseudonym("t1", "cust-42") and is_pseudonym(a)
    assert a != pseudonym("t2", "cust-42") and a != pseudonym("t1", "cust-43")
    assert "cust-42" not in a and not is_pseudonym("cust-42")
