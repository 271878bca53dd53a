"""Amazon SES bounces and complaints, as Amazon SNS delivers them, verified without
trusting the sender.

SNS posts a JSON envelope signed with the key of a certificate it names by URL
(``SigningCertURL``). Three checks make a forged envelope fail:

* the certificate URL must be AWS's (``https://sns.<region>.amazonaws.com/...pem``;
  ``MESSAGING_SNS_URL_PREFIX``, so that tests can serve their own): otherwise anyone
  could sign with a key of their own and name their own certificate;
* the signature (``SignatureVersion`` 1: SHA1withRSA, 2: SHA256withRSA) must verify
  over the canonical string SNS documents for the message type;
* the ``TopicArn`` must be the one the tenant registered: a real SNS message from
  somebody else's topic is signed by AWS too.

Everything here is pure except :class:`CertificateCache`, which fetches a certificate
once per URL.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from afterglow.journeys.messaging.channels.provider_events import AddressEvent
from afterglow.kit.tracing import instrument_http

TOPIC_ARN = r"^arn:aws(-cn|-us-gov)?:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$"

# The fields signed, in this order, per message type (absent optional ones are skipped).
_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}  # fmt: skip
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}


class EnvelopeError(ValueError):
    """The body is not an SNS envelope we can check (a 422 naming the field)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Envelope:
    kind: str
    topic_arn: str
    cert_url: str
    fields: dict[str, str]

    @property
    def message(self) -> str:
        return self.fields["Message"]

    @property
    def subscribe_url(self) -> str | None:
        return self.fields.get("SubscribeURL")


def parse_envelope(body: Any) -> Envelope:
    if not isinstance(body, dict):
        raise EnvelopeError("an SNS message is a JSON object", "body")
    kind = body.get("Type")
    if kind not in _SIGNED:
        raise EnvelopeError(f"unknown SNS message Type: {str(kind)[:40]!r}", "Type")
    fields: dict[str, str] = {}
    for name in (*_SIGNED[kind], "Signature", "SignatureVersion", "SigningCertURL"):
        value = body.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise EnvelopeError(f"{name} is required and must be a string", name)
        fields[name] = value
    if fields["SignatureVersion"] not in _HASHES:
        raise EnvelopeError("SignatureVersion must be 1 or 2", "SignatureVersion")
    return Envelope(kind, fields["TopicArn"], fields["SigningCertURL"], fields)


def string_to_sign(envelope: Envelope) -> bytes:
    parts = [
        f"{name}\n{envelope.fields[name]}\n"
        for name in _SIGNED[envelope.kind]
        if name in envelope.fields
    ]
    return "".join(parts).encode()


def cert_url_allowed(url: str, prefix: str) -> bool:
    return re.fullmatch(prefix + r"[^?#]+\.pem", url) is not None


def subscribe_url_allowed(url: str, prefix: str) -> bool:
    return re.fullmatch(prefix + r"\?Action=ConfirmSubscription&[^#]*", url) is not None


def verify(envelope: Envelope, certificate_pem: bytes) -> bool:
    try:
        key = x509.load_pem_x509_certificate(certificate_pem).public_key()
        signature = base64.b64decode(envelope.fields["Signature"], validate=True)
    except (ValueError, binascii.Error):
        return False
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    algorithm = _HASHES[envelope.fields["SignatureVersion"]]()
    try:
        key.verify(signature, string_to_sign(envelope), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        return False
    return True


def ses_events(message: str) -> list[AddressEvent]:
    """Permanent bounces and complaints of an SES notification (``notificationType``) or
    of an SES event-publishing record (``eventType``); transient bounces (a full mailbox,
    a greylist) are not suppressed, and anything else (deliveries, opens) is ignored."""
    try:
        record = json.loads(message)
    except ValueError:
        return []
    if not isinstance(record, dict):
        return []
    kind = record.get("notificationType") or record.get("eventType")
    out: list[AddressEvent] = []
    if kind == "Bounce":
        bounce = _section(record, "bounce")
        if bounce.get("bounceType") != "Permanent":
            return []
        for r in _recipients(bounce, "bouncedRecipients"):
            detail = r.get("diagnosticCode") or bounce.get("bounceSubType")
            out.append(AddressEvent(r["emailAddress"], "hard_bounce", _text(detail)))
    elif kind == "Complaint":
        complaint = _section(record, "complaint")
        for r in _recipients(complaint, "complainedRecipients"):
            feedback = complaint.get("complaintFeedbackType")
            out.append(AddressEvent(r["emailAddress"], "complaint", _text(feedback) or "complaint"))
    return out


def _section(record: dict[str, Any], key: str) -> dict[str, Any]:
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def _recipients(section: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = section.get(key)
    return [
        r
        for r in (items if isinstance(items, list) else [])
        if isinstance(r, dict) and isinstance(r.get("emailAddress"), str)
    ]


def _text(value: Any, limit: int = 500) -> str | None:
    return None if value is None else str(value)[:limit]


class CertificateCache:
    """AWS's signing certificates, fetched once per URL (they rotate by URL, not in
    place) and kept for the life of the process; bounded so that a flood of allowed but
    distinct URLs cannot grow it without end."""

    def __init__(self, limit: int = 32) -> None:
        self._pems: dict[str, bytes] = {}
        self._limit = limit

    async def get(self, url: str, timeout_s: float) -> bytes | None:
        if url in self._pems:
            return self._pems[url]
        try:
            async with instrument_http(
                httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
            ) as client:
                response = await client.get(url)
        except httpx.HTTPError:
            return None
        if response.status_code != 200 or len(response.content) > 16_384:
            return None
        if len(self._pems) >= self._limit:
            self._pems.pop(next(iter(self._pems)))
        self._pems[url] = response.content
        return response.content
