"""Calls to the other services, always with the signed-in tenant's API key.

The console never widens what a key may do: a service answering 403 (the key lacks its
scope) or 404 (not this tenant's) is shown as such, never worked around."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx


class BackendError(Exception):
    """A service answered with an error (or did not answer)."""

    def __init__(self, service: str, status: int, message: str, field: str | None = None):
        super().__init__(f"{service}: {status} {message}")
        self.service = service
        self.status = status
        self.message = message
        self.field = field


def segment(value: str) -> str:
    """A path segment, escaped: an id with a slash must not reach another route."""
    return quote(value, safe="")


@dataclass
class Backend:
    http: httpx.AsyncClient
    urls: dict[str, str]
    api_key: str

    async def call(self, method: str, service: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}", **kw.pop("headers", {})}
        try:
            r = await self.http.request(method, self.urls[service] + path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise BackendError(service, 503, f"{service} did not answer") from exc
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                message, field = str(err.get("message")), err.get("field")
            except (ValueError, KeyError, TypeError):
                message, field = r.text[:200], None
            raise BackendError(service, r.status_code, message, field)
        return r.json() if r.content else None

    async def get(self, service: str, path: str, **params: Any) -> Any:
        return await self.call("GET", service, path, params=params)

    async def post(self, service: str, path: str, **kw: Any) -> Any:
        return await self.call("POST", service, path, **kw)
