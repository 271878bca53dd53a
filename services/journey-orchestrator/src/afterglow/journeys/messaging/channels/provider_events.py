"""What providers tell us back, verified and read without I/O: SendGrid's and
Postmark's bounce and complaint events, and Twilio's inbound SMS (STOP/START/HELP).

* SendGrid Event Webhook: a JSON array; ``X-Twilio-Email-Event-Webhook-Signature`` is a
  base64 DER ECDSA (P-256, SHA-256) signature over the ``...-Timestamp`` header followed
  by the raw body, checked with the public key SendGrid shows the tenant (base64 DER).
* Postmark: one JSON object per POST, authenticated by the basic-auth credentials the
  tenant put in the webhook URL.
* Twilio: ``X-Twilio-Signature`` is base64 HMAC-SHA1, keyed by the auth token, of the
  full URL Twilio called followed by every form parameter, sorted by name, as name+value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"


@dataclass(frozen=True)
class AddressEvent:
    """A provider says: do not mail this address again (``hard_bounce`` or ``complaint``)."""

    address: str
    reason: str
    detail: str | None


def sendgrid_key_ok(public_key_b64: str) -> bool:
    try:
        key = load_der_public_key(base64.b64decode(public_key_b64, validate=True))
    except (ValueError, binascii.Error, TypeError):
        return False
    return isinstance(key, ec.EllipticCurvePublicKey)


def verify_sendgrid(public_key_b64: str, signature_b64: str, timestamp: str, body: bytes) -> bool:
    try:
        key = load_der_public_key(base64.b64decode(public_key_b64, validate=True))
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error, TypeError):
        return False
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _text(value: Any, limit: int = 500) -> str | None:
    return None if value is None else str(value)[:limit]


def sendgrid_events(batch: Any) -> list[AddressEvent]:
    """Hard bounces and spam reports of a SendGrid batch. A ``bounce`` whose ``type`` is
    ``blocked`` is a soft refusal (a reputation block, a full mailbox): not suppressed."""
    out: list[AddressEvent] = []
    for item in batch if isinstance(batch, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("email"), str):
            continue
        event = item.get("event")
        if event == "bounce" and item.get("type", "bounce") != "blocked":
            detail = _text(item.get("reason") or item.get("status"))
            out.append(AddressEvent(item["email"], "hard_bounce", detail))
        elif event == "spamreport":
            out.append(AddressEvent(item["email"], "complaint", "spam report"))
    return out


def postmark_events(record: Any) -> list[AddressEvent]:
    if not isinstance(record, dict) or not isinstance(record.get("Email"), str):
        return []
    kind = record.get("RecordType")
    if kind == "Bounce" and (record.get("Type") == "HardBounce" or record.get("TypeCode") == 1):
        return [AddressEvent(record["Email"], "hard_bounce", _text(record.get("Description")))]
    if kind == "SpamComplaint":
        return [AddressEvent(record["Email"], "complaint", "spam complaint")]
    return []


def basic_auth_ok(header: str | None, expected: str) -> bool:
    """``Authorization: Basic ...`` against ``user:password``, in constant time."""
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(given, expected.encode())


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    data = url + "".join(k + v for k, v in sorted(params))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


def _port_variants(url: str) -> list[str]:
    """The URL as called, without its default port and with it: Twilio's own validators
    accept either, since a proxy in between may add or drop ``:443``."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    if parts.port is not None and parts.port != default:
        return [url]
    bare = urlunsplit(parts._replace(netloc=host))
    with_port = urlunsplit(parts._replace(netloc=f"{host}:{default}"))
    return [url, bare, with_port]


def verify_twilio(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str | None
) -> bool:
    if not signature:
        return False
    pairs = list(params)
    return any(
        hmac.compare_digest(twilio_signature(auth_token, u, pairs).encode(), signature.encode())
        for u in _port_variants(url)
    )


# Twilio's default opt-out, opt-in and help keywords (Advanced Opt-Out's defaults): the
# whole message, case-insensitive, surrounding spaces and punctuation ignored.
STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP", "INFO"})


def keyword(body: str | None) -> str | None:
    """``stop``, ``start``, ``help`` or None for an ordinary reply."""
    word = " ".join((body or "").strip().strip(".!").upper().split())
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None
