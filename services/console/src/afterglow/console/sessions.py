"""Sign-in with a tenant API key, turned into a session cookie.

- The key must carry ``console:read``; ``console:write`` lets the session act (approve a
  review, activate a journey). A read-only key sees every page and changes nothing: the
  console refuses its posts, and the services would refuse its calls anyway.
- The cookie is HttpOnly (no script reads it), SameSite=Lax (another site's form post
  does not carry it), Secure whenever the console is served over HTTPS, and expires
  with the session (``console_session_ttl_s`` from sign-in).
- Every form carries the session's CSRF token, compared in constant time; posts whose
  Origin names another site are refused as well (kit.origin).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import Request
from sqlalchemy import delete, select

from afterglow.console.backend import Backend
from afterglow.console.models import SessionRow
from afterglow.console.settings import ConsoleSettings
from afterglow.kit.app import Runtime, runtime_of

COOKIE = "afterglow_console"
# The sign-in form has no session yet: its CSRF token is a double-submitted cookie.
SIGNIN_COOKIE = "afterglow_console_signin"
READ_SCOPE = "console:read"
WRITE_SCOPE = "console:write"


class SignInRequired(Exception):
    """No valid session: the browser is sent to the sign-in page."""


class ReadOnly(Exception):
    """The session's key may read but not act."""


class BadCsrf(Exception):
    """A form post without this session's token, or from another site."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ConsoleSession:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]
    csrf_token: str
    expires_at: datetime
    backend: Backend

    @property
    def can_write(self) -> bool:
        return "*" in self.scopes or WRITE_SCOPE in self.scopes

    def check_form(self, form: dict[str, str]) -> None:
        if not hmac.compare_digest(form.get("csrf", ""), self.csrf_token):
            raise BadCsrf("the form's token is missing or not this session's")

    def require_write(self) -> None:
        if not self.can_write:
            raise ReadOnly("this key is read-only (it lacks console:write)")


async def sign_in(runtime: Runtime, presented: str) -> tuple[str, datetime] | None:
    """A new session for a valid key with ``console:read``: (cookie token, expiry)."""
    settings: ConsoleSettings = runtime.settings
    async with runtime.sessionmaker.begin() as s:
        principal = await runtime.api_keys.verify(s, presented.strip())
        if principal is None or not principal.allows(READ_SCOPE):
            return None
        token = secrets.token_urlsafe(32)
        now = runtime.clock.now()
        expires = now + timedelta(seconds=settings.console_session_ttl_s)
        s.add(
            SessionRow(
                token_hash=_hash(token),
                tenant_id=principal.tenant_id,
                key_id=principal.key_id,
                api_key=presented.strip(),
                scopes=sorted(principal.scopes),
                csrf_token=secrets.token_urlsafe(24),
                created_at=now,
                expires_at=expires,
            )
        )
        # Sessions past their expiry are of no use to anyone: sweep them while here.
        await s.execute(delete(SessionRow).where(SessionRow.expires_at < now))
    return token, expires


async def sign_out(runtime: Runtime, token: str | None) -> None:
    if not token:
        return
    async with runtime.sessionmaker.begin() as s:
        await s.execute(delete(SessionRow).where(SessionRow.token_hash == _hash(token)))


async def current_session(request: Request) -> ConsoleSession:
    """The signed-in session (a dependency); SignInRequired without a live one. The
    key is checked again on every page: a key revoked since sign-in ends the session."""
    runtime = runtime_of(request)
    token = request.cookies.get(COOKIE)
    if not token:
        raise SignInRequired
    async with runtime.sessionmaker() as s:
        row = (
            await s.execute(select(SessionRow).where(SessionRow.token_hash == _hash(token)))
        ).scalar_one_or_none()
        if row is None or row.expires_at <= runtime.clock.now():
            raise SignInRequired
        if await runtime.api_keys.verify(s, row.api_key) is None:
            raise SignInRequired
    settings: ConsoleSettings = runtime.settings
    assert runtime.http is not None
    return ConsoleSession(
        tenant_id=row.tenant_id,
        key_id=row.key_id,
        scopes=frozenset(row.scopes),
        csrf_token=row.csrf_token,
        expires_at=row.expires_at,
        backend=Backend(runtime.http, settings.urls(), row.api_key),
    )
