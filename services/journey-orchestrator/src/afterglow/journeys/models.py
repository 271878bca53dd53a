"""Tables of the ``journeys`` schema. The journey engine's tables live here; the
messaging subpackage defines its own in ``messaging/models.py`` on the same Base."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, SmallInteger, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from afterglow.events import event_tables
from afterglow.kit.auth import api_keys_table
from afterglow.kit.db import service_metadata

SCHEMA = "journeys"


class Base(DeclarativeBase):
    # A class statement (not kit's declarative_base() factory) so mypy sees a real base.
    metadata = service_metadata(SCHEMA)


tables = event_tables(Base.metadata)
api_keys = api_keys_table(Base.metadata)

TS = DateTime(timezone=True)


class CustomerProfile(Base):
    """The projection the conditions read. The columns are for humans and SQL; ``state``
    is the engine's full :class:`~afterglow.journeys.engine.Profile` (incl. per-order
    anchors kept for out-of-order events)."""

    __tablename__ = "customer_profiles"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    orders_count: Mapped[int] = mapped_column(Integer, default=0)
    total_spent: Mapped[int] = mapped_column(BigInteger, default=0)  # minor units
    currency: Mapped[str | None] = mapped_column(Text)
    first_order_at: Mapped[datetime | None] = mapped_column(TS)
    last_order_at: Mapped[datetime | None] = mapped_column(TS)
    open_tickets: Mapped[int] = mapped_column(Integer, default=0)
    consent: Mapped[bool] = mapped_column(Boolean, default=True)
    timezone: Mapped[str | None] = mapped_column(Text)
    tier: Mapped[str | None] = mapped_column(Text)
    last_surveyed_at: Mapped[datetime | None] = mapped_column(TS)
    last_nps: Mapped[int | None] = mapped_column(SmallInteger)
    last_band: Mapped[str | None] = mapped_column(Text)
    state: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    updated_at: Mapped[datetime] = mapped_column(TS)


class JourneyDefinition(Base):
    __tablename__ = "journey_definitions"
    __table_args__ = (
        Index("uq_journey_definitions_version", "tenant_id", "name", "version", unique=True),
        # At most one active version per journey.
        Index(
            "uq_journey_definitions_active",
            "tenant_id",
            "name",
            unique=True,
            postgresql_where=text("active"),
        ),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(TS)
    activated_at: Mapped[datetime | None] = mapped_column(TS)


class JourneyInstance(Base):
    __tablename__ = "journey_instances"
    __table_args__ = (
        Index("ix_journey_instances_customer", "tenant_id", "customer_id", "status"),
        Index("ix_journey_instances_started", "tenant_id", "started_at"),
    )
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    journey: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)  # running, paused, exited, completed, skipped
    order_id: Mapped[str | None] = mapped_column(Text)
    anchors: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    state: Mapped[dict[str, Any]] = mapped_column(JSONB)  # engine.InstanceState
    started_at: Mapped[datetime] = mapped_column(TS)
    updated_at: Mapped[datetime] = mapped_column(TS)
    ended_at: Mapped[datetime | None] = mapped_column(TS)


class JourneyTransition(Base):
    """Every transition and every skipped, deferred or timed-out step, with its cause
    (an event id or a timer id)."""

    __tablename__ = "journey_transitions"
    __table_args__ = (
        Index("ix_journey_transitions_instance", "tenant_id", "instance_id", "id"),
        Index("ix_journey_transitions_funnel", "tenant_id", "journey", "at"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    instance_id: Mapped[str] = mapped_column(Text)
    journey: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(Text)
    from_stage: Mapped[str | None] = mapped_column(Text)
    to_stage: Mapped[str | None] = mapped_column(Text)
    cause: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(TS)


class JourneyTimer(Base):
    __tablename__ = "journey_timers"
    __table_args__ = (
        Index("ix_journey_timers_due", "due_at", postgresql_where=text("state = 'pending'")),
        Index("ix_journey_timers_instance", "tenant_id", "instance_id", "state"),
    )
    id: Mapped[str] = mapped_column(Text, primary_key=True)  # engine.timer_id: stable
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    instance_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text)
    due_at: Mapped[datetime] = mapped_column(TS)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    state: Mapped[str] = mapped_column(Text)  # pending, fired, cancelled
    created_at: Mapped[datetime] = mapped_column(TS)
    fired_at: Mapped[datetime | None] = mapped_column(TS)


class GoalConversion(Base):
    __tablename__ = "goal_conversions"
    __table_args__ = (
        Index("ix_goal_conversions_journey", "tenant_id", "journey", "version"),
        Index("ix_goal_conversions_converted", "tenant_id", "converted_at"),
    )
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    instance_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text)
    journey: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    event_id: Mapped[str] = mapped_column(Text)
    converted_at: Mapped[datetime] = mapped_column(TS)
    # The converting order and its total (migration 0008): the revenue of goal orders.
    order_id: Mapped[str | None] = mapped_column(Text)
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(Text)
