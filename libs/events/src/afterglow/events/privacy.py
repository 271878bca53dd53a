"""Erasure by pseudonym: the one-way stand-in for an erased customer's id.

Services keep their aggregates after a GDPR erasure (points issued, conversions, revenue)
by replacing the customer id in their rows with this alias. It is deterministic, so one
customer maps to one alias in every table and every service (distinct counts stay right),
and a returning customer's id still finds their erased history (they are not "new").

It is an unkeyed hash: someone holding the database and a list of candidate customer ids
could test them against the aliases. The ids are the platform's opaque customer numbers,
not names or emails; a keyed hash would need a secret shared by every service.
"""

from __future__ import annotations

import hashlib

ERASED_PREFIX = "erased-"


def pseudonym(tenant_id: str, customer_id: str) -> str:
    digest = hashlib.sha256(f"{tenant_id}:{customer_id}".encode()).hexdigest()
    return ERASED_PREFIX + digest[:24]


def is_pseudonym(customer_id: str) -> bool:
    return customer_id.startswith(ERASED_PREFIX)
