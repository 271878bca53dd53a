"""One customer across platform and helpdesk: the rules, pure (no I/O).

A journey is keyed by the platform's customer id (Shopify's ``123``), while a helpdesk
ticket knows its requester by email or phone. Orders show both: each order placed
links its customer's email hash and phone hash to its subject (:func:`links_from`).
A ticket is then resolved, in this order (:func:`resolve`):

1. its customer pinned when the ticket was first seen (later events of one ticket stay
   on one customer and one partition, whatever orders revealed meanwhile: a link
   learned later re-keys nothing already applied, it applies from then on);
2. the escalation it was opened for (a ticket Afterglow opened carries
   :data:`ESCALATION_EXTERNAL_ID_PREFIX` in its ``external_id``);
3. the customer id the sender names (the helpdesk's ``external_id``, or
   ``customer_id`` of a canonical event);
4. the customer its requester's email, else phone, was linked to by an order (a
   Zendesk requester known by id only is first looked up in Zendesk:
   afterglow.ingest.requesters);
5. else nobody: the ticket keeps a subject of its own (``email:<hash>`` or
   ``zendesk:<requester id>``) that no journey is keyed by, and the reason is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from afterglow.events import catalog as c

# Tickets Afterglow opens for an escalation carry ``external_id`` =
# prefix + escalation id, and the tags below: the helpdesk's own webhook about that
# ticket then resolves to the escalated customer without guessing.
ESCALATION_EXTERNAL_ID_PREFIX = "afterglow-escalation:"
ESCALATION_TAGS = ("afterglow", "afterglow_escalation")

GUEST_PREFIXES = ("email:", "phone:")


def is_guest(subject: str) -> bool:
    """A subject made from a hash (a guest checkout), not a platform customer id."""
    return subject.startswith(GUEST_PREFIXES)


@dataclass(frozen=True)
class Link:
    kind: str  # email | phone
    value_hash: str  # sha256 hex of the normalized value
    subject: str
    email: str | None = None  # the normalized email (kind email only)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.value_hash)


def preferred(old: str | None, new: str) -> str:
    """Which subject a contact links to when two orders disagree: a platform customer
    id beats a guest hash (a guest who later registers is the registered customer from
    then on; a registered customer's later guest checkout does not unlink them), and
    otherwise the later order wins."""
    if old is not None and is_guest(new) and not is_guest(old):
        return old
    return new


Hasher = Callable[[str | None], str | None]


def links_from(
    items: Iterable[tuple[c.EventData, str | None]], email_hash: Hasher, phone_hash: Hasher
) -> list[Link]:
    """The links the order.placed events among ``items`` (data, subject) show,
    merged by :func:`merge` (one row per contact, as one multi-row upsert needs).
    A canonical order may carry the email without its hash: ``email_hash`` and
    ``phone_hash`` (the normalizers' own) compute it."""
    found: list[Link] = []
    for data, subject in items:
        if not isinstance(data, c.OrderPlaced) or not subject:
            continue
        if c.is_anonymous_subject(subject):
            continue
        cust = data.customer
        eh = cust.email_hash or email_hash(cust.email)
        if eh:
            found.append(Link("email", eh, subject, cust.email or None))
        ph = cust.phone_hash or phone_hash(cust.phone)
        if ph:
            found.append(Link("phone", ph, subject))
    return merge(found)


def merge(links: Iterable[Link]) -> list[Link]:
    out: dict[tuple[str, str], Link] = {}
    for link in links:
        old = out.get(link.key)
        subject = preferred(old.subject if old else None, link.subject)
        email = link.email or (old.email if old else None)
        out[link.key] = Link(link.kind, link.value_hash, subject, email)
    # Sorted: concurrent batches lock the rows they upsert in one order (no deadlock).
    return sorted(out.values(), key=lambda x: x.key)


@dataclass(frozen=True)
class Requester:
    """Who a ticket event says asked, as far as the payload tells."""

    ticket_id: str
    # The subject to use when nothing better is known (no journey is keyed by it).
    fallback_subject: str
    # The customer id the sender names (Zendesk external_id, canonical customer_id).
    customer_id: str | None = None
    email_hash: str | None = None
    phone_hash: str | None = None
    escalation_id: str | None = None
    # The helpdesk's id of the requester (Zendesk's ``requester_id``): its events name
    # the requester by id only, so the email is looked up (afterglow.ingest.requesters).
    helpdesk_user_id: str | None = None
    # Why that lookup gave nothing (refused credentials, helpdesk down): said as the reason.
    lookup_error: str | None = None


@dataclass(frozen=True)
class Resolution:
    subject: str
    resolved_by: str  # escalation | customer_id | email | phone | unresolved
    reason: str | None = None


def escalation_of(external_id: str | None) -> str | None:
    if external_id and external_id.startswith(ESCALATION_EXTERNAL_ID_PREFIX):
        return external_id[len(ESCALATION_EXTERNAL_ID_PREFIX) :] or None
    return None


def resolve(
    r: Requester,
    *,
    pinned: Resolution | None,
    escalations: Mapping[str, str],
    links: Mapping[tuple[str, str], str],
) -> Resolution:
    """The customer a ticket event belongs to (see the module's docstring)."""
    if pinned is not None:
        return pinned
    if r.escalation_id is not None:
        subject = escalations.get(r.escalation_id)
        if subject is not None:
            return Resolution(subject, "escalation")
        return Resolution(r.fallback_subject, "unresolved", f"unknown escalation {r.escalation_id}")
    if r.customer_id:
        return Resolution(r.customer_id, "customer_id")
    if r.email_hash and ("email", r.email_hash) in links:
        return Resolution(links[("email", r.email_hash)], "email")
    if r.phone_hash and ("phone", r.phone_hash) in links:
        return Resolution(links[("phone", r.phone_hash)], "phone")
    if r.email_hash or r.phone_hash:
        reason = "no order links the requester's email or phone to a customer"
    elif r.lookup_error:
        reason = f"the requester's email could not be looked up: {r.lookup_error}"[:500]
    else:
        reason = "the ticket names no customer id, email or phone of its requester"
    return Resolution(r.fallback_subject, "unresolved", reason)
