"""Local stand-ins for the Zendesk and Gorgias ticket APIs (third parties: the only
fakes the house allows), served by uvicorn on 127.0.0.1 in a thread.

They check what the real ones check. Zendesk: API token auth (``Authorization: Basic``
of ``{email}/token:{token}``; 401 otherwise), ``POST /api/v2/tickets`` needs
``ticket.comment.body``; an ``Idempotency-Key`` repeated with the same body answers
the ticket already created (``x-idempotency-lookup: hit``), with another body a 400;
``GET /api/v2/tickets?external_id=`` lists the tickets with that external id;
``GET /api/v2/users/{id}.json`` answers a user (``{"user": {"id", "email", ...}}``) with
the same auth, 404 ``RecordNotFound`` for an unknown id.
Gorgias: basic auth with the API username and key, ``POST /api/tickets`` needs a
customer (email or id) and at least one message with ``channel``, ``via``,
``from_agent`` and, for an incoming one, a ``sender``; it has no idempotency key (a
repeated POST is a second ticket); ``GET /api/tickets?external_id=`` lists the tickets
with that external id under ``data``.

``slow_once``: the next ticket is created, then its answer waits this many seconds (a
client's timeout loses it: the case a retry must not turn into a second ticket).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from afterglow.devstack.serving import serving


def _basic(request: Request) -> tuple[str, str] | None:
    auth = request.headers.get("authorization", "")
    if not auth.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, password


class FakeHelpdesk:
    def __init__(self) -> None:
        # Zendesk: agent email -> API token; Gorgias: username -> API key.
        self.zendesk_tokens: dict[str, str] = {}
        self.gorgias_keys: dict[str, str] = {}
        self.tickets: list[dict[str, Any]] = []  # every ticket created, both helpdesks
        self.zendesk_users: dict[str, dict[str, Any]] = {}  # user id -> user
        self.user_lookups: list[str] = []  # user ids asked for (authenticated)
        self.posts = 0  # ticket creations asked for (answered or not)
        self.slow_once: float = 0.0
        self._idempotency: dict[str, tuple[str, dict[str, Any]]] = {}
        self.url = ""
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        def zendesk_agent(request: Request) -> str | None:
            cred = _basic(request)
            if cred is None or not cred[0].endswith("/token"):
                return None
            email = cred[0].removesuffix("/token")
            return email if self.zendesk_tokens.get(email) == cred[1] else None

        @app.post("/api/v2/tickets")
        async def zendesk_create(request: Request) -> JSONResponse:
            if zendesk_agent(request) is None:
                return JSONResponse({"error": "Couldn't authenticate you"}, status_code=401)
            self.posts += 1
            raw = await request.body()
            key = request.headers.get("idempotency-key")
            if key and key in self._idempotency:
                digest, ticket = self._idempotency[key]
                if digest != raw.decode():
                    return JSONResponse(
                        {"error": "IdempotentRequestError", "description": "key reused"},
                        status_code=400,
                    )
                return JSONResponse(
                    {"ticket": ticket}, status_code=201, headers={"x-idempotency-lookup": "hit"}
                )
            body = json.loads(raw)
            t = body.get("ticket") if isinstance(body, dict) else None
            comment = t.get("comment") if isinstance(t, dict) else None
            if not isinstance(comment, dict) or not comment.get("body"):
                return JSONResponse(
                    {"error": "RecordInvalid", "details": {"base": ["comment required"]}},
                    status_code=422,
                )
            ticket = {
                "id": 9000 + len(self.tickets),
                "subject": t.get("subject"),
                "description": comment["body"],
                "priority": t.get("priority"),
                "tags": t.get("tags") or [],
                "external_id": t.get("external_id"),
                "requester": t.get("requester"),
                "status": "new",
                "helpdesk": "zendesk",
            }
            self.tickets.append(ticket)
            if key:
                self._idempotency[key] = (raw.decode(), ticket)
            if self.slow_once:
                delay, self.slow_once = self.slow_once, 0.0
                await asyncio.sleep(delay)
            return JSONResponse(
                {"ticket": ticket}, status_code=201, headers={"x-idempotency-lookup": "miss"}
            )

        @app.get("/api/v2/tickets")
        async def zendesk_list(request: Request, external_id: str | None = None) -> JSONResponse:
            if zendesk_agent(request) is None:
                return JSONResponse({"error": "Couldn't authenticate you"}, status_code=401)
            found = [
                t
                for t in self.tickets
                if t["helpdesk"] == "zendesk"
                and (external_id is None or t["external_id"] == external_id)
            ]
            return JSONResponse({"tickets": found, "count": len(found)})

        @app.get("/api/v2/users/{user_id}.json")
        async def zendesk_user(request: Request, user_id: str) -> JSONResponse:
            if zendesk_agent(request) is None:
                return JSONResponse({"error": "Couldn't authenticate you"}, status_code=401)
            self.user_lookups.append(user_id)
            user = self.zendesk_users.get(user_id)
            if user is None:
                return JSONResponse(
                    {"error": "RecordNotFound", "description": "Not found"}, status_code=404
                )
            return JSONResponse({"user": {"id": int(user_id), "role": "end-user", **user}})

        @app.post("/api/tickets")
        async def gorgias_create(request: Request) -> JSONResponse:
            cred = _basic(request)
            if cred is None or self.gorgias_keys.get(cred[0]) != cred[1]:
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            self.posts += 1
            body = json.loads(await request.body())
            customer = body.get("customer") or {}
            messages = body.get("messages") or []
            errors = []
            if not (customer.get("email") or customer.get("id")):
                errors.append("customer: email or id required")
            if not messages:
                errors.append("messages: at least one required")
            for m in messages:
                for name in ("channel", "via", "from_agent"):
                    if name not in m:
                        errors.append(f"messages.{name}: required")
                if m.get("from_agent") is False and not (m.get("sender") or {}).get("email"):
                    errors.append("messages.sender: required for an incoming message")
            if errors:
                return JSONResponse({"error": {"data": errors}}, status_code=400)
            ticket = {
                "id": 7000 + len(self.tickets),
                "subject": body.get("subject"),
                "description": messages[0].get("body_text"),
                "tags": [t.get("name") for t in body.get("tags") or []],
                "external_id": body.get("external_id"),
                "requester": customer,
                "helpdesk": "gorgias",
            }
            self.tickets.append(ticket)
            if self.slow_once:
                delay, self.slow_once = self.slow_once, 0.0
                await asyncio.sleep(delay)
            return JSONResponse(ticket, status_code=201)

        @app.get("/api/tickets")
        async def gorgias_list(request: Request, external_id: str | None = None) -> JSONResponse:
            cred = _basic(request)
            if cred is None or self.gorgias_keys.get(cred[0]) != cred[1]:
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            found = [
                t
                for t in self.tickets
                if t["helpdesk"] == "gorgias"
                and (external_id is None or t["external_id"] == external_id)
            ]
            return JSONResponse({"data": found, "meta": {"next_cursor": None}})

        return app


@contextlib.contextmanager
def running_helpdesk() -> Iterator[FakeHelpdesk]:
    fake = FakeHelpdesk()
    with serving(fake.app) as url:
        fake.url = url
        yield fake
