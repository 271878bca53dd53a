"""Email over SMTP with aiosmtplib: any provider's relay (SES, SendGrid, Postmark,
Mailgun...) or the merchant's own server.

Settings (``config``): ``host``, ``port``, ``security`` (``starttls``: upgrade on 587;
``tls``: implicit TLS on 465; ``none``: plain, only for a local catcher), ``username``
(the password is the route's sealed secret), ``from_email``, ``from_name`` (default: the
shop's name), ``reply_to``, ``envelope_from`` (the bounce address, default
``from_email``), ``dkim_domain`` and ``dkim_selector`` with the sealed ``dkim_key``,
``tls_ca_pem`` (a merchant's own server with a certificate from a private CA: that CA is
trusted for this channel only; certificates are always verified, never switched off).

Replies map onto the dispatcher's retry rules: 4xx (greylisting, a full queue, a rate
limit) retries with backoff; 5xx fails at once with the server's reply as the reason; a
5xx refusing the recipient itself (550-553 at RCPT) also marks the address a hard
bounce. A connection refused, a timeout or a dropped connection retries.

One connection per send: simple and correct (no connection shared between tenants,
none left half-open after a timeout). A per-tenant pool is the next step for volume.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime

import aiosmtplib

from afterglow.journeys.messaging.channels.base import Job, Outcome, Senders
from afterglow.journeys.messaging.channels.mime import build_email, dkim_sign
from afterglow.kit.outbound import ForbiddenDestination, check_destination

RECIPIENT_GONE = frozenset({550, 551, 553})


def _reply(code: int, message: str) -> str:
    return f"SMTP {code} {' '.join(message.split())}"[:500]


def _response_outcome(code: int, message: str, *, at_rcpt: bool = False) -> Outcome:
    reason = _reply(code, message)
    if 400 <= code < 500:
        return Outcome(False, True, reason)
    suppress = "hard_bounce" if at_rcpt and code in RECIPIENT_GONE else None
    return Outcome(False, False, reason, suppress=suppress)


def render_bytes(job: Job, *, date: datetime | None = None) -> bytes:
    """The exact bytes sent for ``job``, DKIM-signed when the route has a key."""
    cfg = job.route.config
    p = job.payload
    from_email = str(cfg["from_email"])
    msg = build_email(
        message_id=job.message_id,
        from_email=from_email,
        from_name=cfg.get("from_name") or p.get("shop_name"),
        to=job.to,
        subject=str(p.get("subject") or ""),
        text=str(p.get("text") or ""),
        html=p.get("html"),
        reply_to=cfg.get("reply_to"),
        headers=p.get("headers") or {},
        date=date or datetime.now(UTC),
    )
    raw = msg.as_bytes()
    if job.route.dkim_key and cfg.get("dkim_domain") and cfg.get("dkim_selector"):
        raw = dkim_sign(
            raw,
            domain=str(cfg["dkim_domain"]),
            selector=str(cfg["dkim_selector"]),
            private_key_pem=job.route.dkim_key,
        )
    return raw


class SmtpChannel:
    def __init__(self, senders: Senders) -> None:
        self.s = senders

    async def send(self, job: Job) -> Outcome:
        cfg = job.route.config
        host, port = str(cfg["host"]), int(cfg["port"])
        try:
            # The same rule as webhook endpoints: a tenant's SMTP host must not be a
            # door into the cluster (smtp://postgres:5432 probing), checked at each send.
            await check_destination(f"https://{host}:{port}/", allow_private=self.s.allow_private)
        except ForbiddenDestination as exc:
            return Outcome(False, False, f"smtp host not allowed: {exc}")
        security = cfg.get("security", "starttls")
        timeout = self.s.timeout_s
        raw = render_bytes(job)
        ca = cfg.get("tls_ca_pem")
        tls_context = ssl.create_default_context(cadata=str(ca)) if ca else None
        client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            username=cfg.get("username") or None,
            password=job.route.secret if cfg.get("username") else None,
            use_tls=security == "tls",
            start_tls=security == "starttls",
            tls_context=tls_context,
            timeout=timeout,
        )
        try:
            # A total deadline on top of aiosmtplib's per-command timeout: a server
            # trickling its replies must not hold the slot past the lease.
            async with asyncio.timeout(timeout):
                await client.connect()
                try:
                    _, reply = await client.sendmail(
                        str(cfg.get("envelope_from") or cfg["from_email"]), [job.to], raw
                    )
                finally:
                    client.close()
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            return _response_outcome(first.code, first.message, at_rcpt=True)
        except aiosmtplib.SMTPRecipientRefused as exc:
            return _response_outcome(exc.code, exc.message, at_rcpt=True)
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected) as exc:
            return Outcome(False, True, f"smtp connection error: {type(exc).__name__}")
        except (TimeoutError, aiosmtplib.SMTPTimeoutError):
            return Outcome(False, True, f"smtp timeout after {timeout:g}s")
        except aiosmtplib.SMTPResponseException as exc:
            return _response_outcome(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return Outcome(False, True, f"smtp error: {type(exc).__name__}: {exc}"[:500])
        return Outcome(True, False, f"SMTP 250 {' '.join(reply.split())}"[:500])
