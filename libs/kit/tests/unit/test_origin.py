"""kit.origin: which form posts count as cross-site."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from afterglow.kit.origin import cross_site_post

PUBLIC = "https://feedback.shop.example"


def post(headers: dict[str, str], host: str = "feedback.shop.example") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": host, **headers}.items()]
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "https",
        "server": (host, 443),
        "path": "/s/token",
        "root_path": "",
        "query_string": b"",
        "headers": raw,
    }
    return Request(scope)


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": PUBLIC},
        {"origin": "https://FEEDBACK.shop.example:443"},
        {"referer": f"{PUBLIC}/s/token?score=9"},
        {},  # not a browser form: RFC 8058 one-click from a mailbox provider
    ],
)
def test_same_site_posts_pass(headers):
    assert cross_site_post(post(headers), PUBLIC) is None


def test_the_host_the_request_was_sent_to_counts_as_ours():
    request = post({"origin": "https://10.0.0.5"}, host="10.0.0.5")
    assert cross_site_post(request, PUBLIC) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"origin": "http://feedback.shop.example"},  # another scheme is another origin
        {"referer": "https://evil.example/p"},
        {"sec-fetch-site": "cross-site"},
    ],
)
def test_cross_site_posts_are_refused(headers):
    reason = cross_site_post(post(headers), PUBLIC)
    assert reason is not None and "evil" not in reason
