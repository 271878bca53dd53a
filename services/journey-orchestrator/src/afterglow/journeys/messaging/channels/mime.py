"""The email as it goes over SMTP: a real MIME message, built and signed without I/O.

* ``multipart/alternative`` with the text part first and the HTML part last (clients
  show the last part they can render).
* ``Message-ID`` derives from the message id, not from a random source: a retry after a
  crash between the server's 250 and our record carries the same Message-ID, which
  receivers and the merchant can recognise as the same message.
* ``List-Unsubscribe`` and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` on
  marketing mail (RFC 8058; Gmail and Yahoo require both of bulk senders).
* DKIM (optional): relaxed/relaxed canonicalisation, because relays may rewrap header
  whitespace; the signed header list includes both List-Unsubscribe headers, as the
  RFC 8058 one-click requires.
"""

from __future__ import annotations

import email.policy
from collections.abc import Mapping
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

import dkim

SIGNED_HEADERS = (
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def message_id_header(message_id: str, from_email: str) -> str:
    return f"<{message_id}@{domain_of(from_email)}>"


def build_email(
    *,
    message_id: str,
    from_email: str,
    from_name: str | None,
    to: str,
    subject: str,
    text: str,
    html: str | None,
    reply_to: str | None,
    headers: Mapping[str, str],
    date: datetime,
) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = Address(display_name=from_name or "", addr_spec=from_email)
    msg["To"] = to
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id_header(message_id, from_email)
    for name, value in headers.items():
        msg[name] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


def dkim_sign(raw: bytes, *, domain: str, selector: str, private_key_pem: str) -> bytes:
    """``raw`` with a DKIM-Signature header in front."""
    present = {
        line.split(b":", 1)[0].strip().lower()
        for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line and not line[:1].isspace()
    }
    include = [h.encode() for h in SIGNED_HEADERS if h.encode() in present]
    signature = dkim.sign(
        raw,
        selector.encode(),
        domain.encode(),
        private_key_pem.encode(),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=include,
    )
    return bytes(signature) + raw
