"""Idle SMTP connections kept per tenant and server, so a burst of one shop's mail does
not pay a TCP, TLS and AUTH handshake per message.

A connection is only ever used by one send at a time (taken, then given back after a
250, closed after anything else), kept at most ``idle_s`` (servers drop idle clients
after a minute or so), and at most ``max_idle`` per key. The key includes a digest of the
credentials and the trusted CA: a rotated password opens new connections, and the old
ones age out. The dispatcher owns the pool and closes it when it stops.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import aiosmtplib

Key = tuple[str, ...]


def pool_key(tenant_id: str, config: Mapping[str, Any], secret: str | None) -> Key:
    digest = hashlib.sha256(
        "\0".join([secret or "", str(config.get("tls_ca_pem") or "")]).encode()
    ).hexdigest()
    return (
        tenant_id,
        str(config["host"]),
        str(config["port"]),
        str(config.get("security", "starttls")),
        str(config.get("username") or ""),
        digest,
    )


class SmtpPool:
    def __init__(self, *, idle_s: float = 30.0, max_idle: int = 8) -> None:
        self.idle_s = idle_s
        self.max_idle = max_idle
        self._idle: dict[Key, list[tuple[float, aiosmtplib.SMTP]]] = {}

    def take(self, key: Key) -> aiosmtplib.SMTP | None:
        """A live idle connection for ``key``, or None."""
        idle = self._idle.get(key, [])
        now = time.monotonic()
        while idle:
            since, client = idle.pop()
            if now - since < self.idle_s and client.is_connected:
                return client
            client.close()
        self._idle.pop(key, None)
        return None

    def give(self, key: Key, client: aiosmtplib.SMTP) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.max_idle or not client.is_connected:
            client.close()
            return
        idle.append((time.monotonic(), client))

    def close(self) -> None:
        for idle in self._idle.values():
            for _, client in idle:
                client.close()
        self._idle.clear()
