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

Connections are reused per tenant and server (``smtp_pool``): a burst of one shop's mail
pays the TCP, TLS and AUTH handshake once. Never shared between tenants, never reused
after a failure.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime

import aiosmtplib

from afterglow.journeys.messaging.channels.base import Job, Outcome, Senders
from afterglow.journeys.messaging.channels.mime import build_email, dkim_sign
from afterglow.journeys.messaging.channels.smtp_pool import pool_key
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

        def connection() -> aiosmtplib.SMTP:
            return aiosmtplib.SMTP(
                hostname=host,
                port=port,
                username=cfg.get("username") or None,
                password=job.route.secret if cfg.get("username") else None,
                use_tls=security == "tls",
                start_tls=security == "starttls",
                tls_context=tls_context,
                timeout=timeout,
            )

        pool = self.s.smtp_pool
        key = pool_key(job.tenant_id, cfg, job.route.secret)
        sender = str(cfg.get("envelope_from") or cfg["from_email"])
        holder: list[aiosmtplib.SMTP] = []

        async def deliver() -> str:
            client = pool.take(key) if pool is not None else None
            reused = client is not None
            if client is None:
                client = connection()
                holder.append(client)
                await client.connect()
            else:
                holder.append(client)
            try:
                _, reply = await client.sendmail(sender, [job.to], raw)
            except aiosmtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                # An idle connection the server had already dropped: once more on a
                # fresh one (nothing was accepted on the dead one).
                client.close()
                client = connection()
                holder.append(client)
                await client.connect()
                _, reply = await client.sendmail(sender, [job.to], raw)
            if pool is not None:
                pool.give(key, client)
            else:
                client.close()
            holder.clear()
            return reply

        try:
            # A total deadline on top of aiosmtplib's per-command timeout: a server
            # trickling its replies must not hold the slot past the lease.
            async with asyncio.timeout(timeout):
                reply = await deliver()
        except BaseException as exc:
            # Never given back after a failure (nor a cancellation): its state, a
            # half-sent DATA or a refused RCPT, is not worth reasoning about.
            for client in holder:
                client.close()
            outcome = failure(exc, timeout) if isinstance(exc, Exception) else None
            if outcome is None:
                raise
            return outcome
        return Outcome(True, False, f"SMTP 250 {' '.join(reply.split())}"[:500])


def failure(exc: Exception, timeout: float) -> Outcome | None:
    """The outcome an SMTP exception stands for; None: not an SMTP matter (a bug)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        first = exc.recipients[0]
        return _response_outcome(first.code, first.message, at_rcpt=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return _response_outcome(exc.code, exc.message, at_rcpt=True)
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        return Outcome(False, True, f"smtp connection error: {type(exc).__name__}")
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return Outcome(False, True, f"smtp timeout after {timeout:g}s")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _response_outcome(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return Outcome(False, True, f"smtp error: {type(exc).__name__}: {exc}"[:500])
    return None
