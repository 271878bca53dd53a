"""Tables of the console schema. The console owns no business data: only its copy of
the tenants' API keys (to verify a key at sign-in, as every service does) and the
signed-in sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from afterglow.events import event_tables
from afterglow.kit.auth import api_keys_table
from afterglow.kit.db import service_metadata
from afterglow.kit.secretbox import SealedText

SCHEMA = "console"


class Base(DeclarativeBase):
    metadata = service_metadata(SCHEMA)


TZ = DateTime(timezone=True)


class SessionRow(Base):
    """One signed-in browser. The cookie holds a random token; only its SHA-256 is
    stored, so a copy of this table signs nobody in. The API key is kept sealed: the
    console calls the other services with it on the tenant's behalf."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_expires_at", "expires_at"),)

    token_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(Text)
    api_key: Mapped[str] = mapped_column(SealedText("console.sessions.api_key"))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    csrf_token: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)
    expires_at: Mapped[datetime] = mapped_column(TZ)


tables = event_tables(Base.metadata)
api_keys = api_keys_table(Base.metadata)
