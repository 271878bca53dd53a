"""Standard Webhooks 1.0 signatures: what Afterglow verifies on the way in (orders-ingest)
and signs on the way out (the messaging dispatcher). Written once, here.

A signature is ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed by the
base64-decoded ``whsec_`` secret. A header may carry several space-separated signatures
(the sender rotating its secret); one match is enough. Timestamps are Unix seconds and
must be within the tolerance, which stops replays of old captured requests.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping

DEFAULT_TOLERANCE_S = 300


def secret_bytes(secret: str) -> bytes:
    """``whsec_`` + base64 of the key; a secret that is not base64 is used as it is."""
    raw = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw.encode()


def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers a sender adds to a request."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secrets: Iterable[str],
    msg_id: str | None,
    timestamp: str | None,
    signature_header: str | None,
    body: bytes,
    now_s: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when one presented ``v1`` signature matches one of ``secrets`` (several are
    active during a rotation) and the timestamp is fresh."""
    stamp = (timestamp or "").strip()
    # ASCII digits within a bound: "²" passes str.isdigit() and then fails int().
    if not msg_id or not signature_header or not (stamp.isascii() and stamp.isdigit()):
        return False
    if len(stamp) > 15:
        return False
    if abs(now_s - int(stamp)) > tolerance_s:
        return False
    presented = [s for s in signature_header.split() if s.startswith("v1,")]
    ok = False
    for secret in secrets:
        expected = sign(secret, msg_id, stamp, body).encode()
        for candidate in presented:
            # No early exit: timing says nothing about which secret or signature matched.
            ok |= hmac.compare_digest(expected, candidate.encode())
    return ok


def verify_headers(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now_s: float,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """The receiver's side, from a request's headers (lower-case names)."""
    return verify(
        [secret],
        headers.get("webhook-id"),
        headers.get("webhook-timestamp"),
        headers.get("webhook-signature"),
        body,
        now_s,
        tolerance_s,
    )
