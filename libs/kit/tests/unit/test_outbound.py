"""Which tenant-chosen URLs a service may call (afterglow.kit.outbound)."""

from __future__ import annotations

import pytest

from afterglow.kit.outbound import ForbiddenDestination, check_destination

PUBLIC = "93.184.216.34"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/x", "not a public address"),
        ("http://10.1.2.3/x", "not a public address"),
        ("http://172.16.0.1/x", "not a public address"),
        ("http://192.168.1.1/x", "not a public address"),
        ("http://100.64.0.1/x", "not a public address"),  # carrier-grade NAT
        ("http://169.254.169.254/latest/meta-data/", "not a public address"),
        ("http://0.0.0.0/x", "not a public address"),
        ("http://[::1]/x", "not a public address"),
        ("http://[fd00::1]/x", "not a public address"),
        ("http://[fe80::1%25eth0]/x", "not a public address"),
        ("http://[::ffff:127.0.0.1]/x", "not a public address"),
        ("http://224.0.0.1/x", "not a public address"),
        ("http://localhost:8080/x", "resolves to"),
        (f"http://user:secret@{PUBLIC}/x", "credentials"),
        (f"ftp://{PUBLIC}/x", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///x", "must name a host"),
        (f"http://{PUBLIC}:99999/x", "invalid port"),
    ],
)
async def test_refused(url: str, reason: str) -> None:
    with pytest.raises(ForbiddenDestination, match=reason):
        await check_destination(url, allow_private=False)


async def test_public_address_is_allowed() -> None:
    await check_destination(f"https://{PUBLIC}/hooks", allow_private=False)
    await check_destination("https://[2606:4700:4700::1111]/hooks", allow_private=False)


async def test_private_allowed_when_the_operator_says_so() -> None:
    await check_destination("http://127.0.0.1:8025/messages", allow_private=True)
    with pytest.raises(ForbiddenDestination, match="http or https"):
        await check_destination("gopher://127.0.0.1/", allow_private=True)


async def test_httpcore_finds_its_event_loop_without_searching_the_path() -> None:
    """httpcore asks sniffio which loop runs, several times per request; without sniffio
    installed every ask was a failed import that searched sys.path (~200 us each)."""
    import sys

    from httpcore._synchronization import current_async_library

    assert current_async_library() == "asyncio"
    assert "sniffio" in sys.modules  # imported once, so every later ask is a dict lookup
