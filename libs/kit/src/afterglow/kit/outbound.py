"""Where a service may send requests to a URL that a tenant chose.

A tenant sets its messaging endpoint (and an operator its platform API base), and the
service then POSTs or GETs there from inside the cluster. Left unchecked, that is a
server-side request forgery: ``http://169.254.169.254/`` reads the cloud metadata,
``http://postgres:5432`` probes the database. So, unless the operator allows private
destinations (dev, tests, an in-cluster receiver), a destination must be http(s), carry
no credentials, and resolve only to globally routable addresses.

The check runs when the URL is saved (a clear 422) and again before each request, since
a name may resolve elsewhere later. A name re-resolved between that check and the
connection (DNS rebinding within seconds) is not covered; an egress NetworkPolicy is
the second line (deploy/).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class ForbiddenDestination(ValueError):
    """The URL may not be called from here; the message says why."""


def _is_public(address: str) -> bool:
    """Raises ValueError when ``address`` is not an IP address literal."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return ip.is_global and not ip.is_multicast


def _split(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ForbiddenDestination("must be an http or https URL")
    if not parts.hostname:
        raise ForbiddenDestination("must name a host")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenDestination("must not carry credentials; use the signing secret")
    try:
        port = parts.port
    except ValueError as exc:
        raise ForbiddenDestination("has an invalid port") from exc
    return parts.hostname, str(port or (443 if parts.scheme == "https" else 80))


async def check_destination(url: str, *, allow_private: bool) -> None:
    """Raise :class:`ForbiddenDestination` unless ``url`` may be requested."""
    host, port = _split(url)
    if allow_private:
        return
    try:
        literal_is_public = _is_public(host)
    except ValueError:
        pass  # a name, not an address literal: resolve it below
    else:
        if not literal_is_public:
            raise ForbiddenDestination(f"{host} is not a public address")
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ForbiddenDestination(f"host {host!r} does not resolve") from exc
    for info in infos:
        address = str(info[4][0])
        if not _is_public(address):
            raise ForbiddenDestination(f"{host} resolves to {address}, not a public address")
