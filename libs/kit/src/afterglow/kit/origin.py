"""Is a form post from our own page? (cross-site request forgery)

The customer-facing forms (the survey and review pages, the unsubscribe page) carry
their credential in the URL, so a page on any other site that knows a link could post
an answer, a review or an unsubscribe in the customer's browser. Browsers send
``Origin`` on every POST (and ``Referer`` when the page's policy allows it); a post whose
Origin or Referer names another site is refused.

Allowed: the service's public base URL (what the links in messages use) and the
origin the request itself was sent to (the same page opened through another name of
the host, ``localhost`` rather than ``127.0.0.1``). A post with neither header is
allowed: it does not come from a browser form (RFC 8058 one-click unsubscribe is posted
by the mailbox provider's servers, without Origin).

Our pages must therefore not send ``Referrer-Policy: no-referrer``: under it a browser
posts ``Origin: null`` even to the same origin. ``same-origin`` keeps the token out of
other sites' logs just as well.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request

REFERRER_POLICY = "same-origin"


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = parts.hostname.lower() + (f":{port}" if port and port != default else "")
    return f"{parts.scheme.lower()}://{netloc}"


def cross_site_post(request: Request, public_base_url: str) -> str | None:
    """Why this post must be refused as cross-site, or None when it may proceed. The
    reason names the header, never its value (pages show it)."""
    allowed = {_origin(public_base_url), _origin(str(request.base_url))} - {None}
    origin = request.headers.get("origin")
    if origin is not None:
        if _origin(origin) in allowed:
            return None
        return "the form was posted from another site (Origin)"
    referer = request.headers.get("referer")
    if referer is not None:
        if _origin(referer) in allowed:
            return None
        return "the form was posted from another site (Referer)"
    if request.headers.get("sec-fetch-site") == "cross-site":
        return "the form was posted from another site (Sec-Fetch-Site)"
    return None
