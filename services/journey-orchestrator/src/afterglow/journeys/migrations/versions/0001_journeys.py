"""Platform tables and the journey engine's tables.

Revision ID: 0001_journeys
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from afterglow.journeys.models import api_keys, tables
from afterglow.kit.migrations import create_platform_tables, drop_platform_tables

revision = "0001_journeys"
down_revision = None
branch_labels = None
depends_on = None

S = "journeys"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    create_platform_tables(op, tables, api_keys)
    op.create_table(
        "customer_profiles",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("customer_id", sa.Text(), primary_key=True),
        sa.Column("orders_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total_spent", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("currency", sa.Text()),
        sa.Column("first_order_at", TS),
        sa.Column("last_order_at", TS),
        sa.Column("open_tickets", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("consent", sa.Boolean(), nullable=False, server_default=sa.text("true")),
        sa.Column("timezone", sa.Text()),
        sa.Column("tier", sa.Text()),
        sa.Column("last_surveyed_at", TS),
        sa.Column("last_nps", sa.SmallInteger()),
        sa.Column("last_band", sa.Text()),
        sa.Column("state", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("updated_at", TS, nullable=False),
        schema=S,
    )
    op.create_table(
        "journey_definitions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("body", JSONB(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("activated_at", TS),
        schema=S,
    )
    op.create_index(
        "uq_journey_definitions_version",
        "journey_definitions",
        ["tenant_id", "name", "version"],
        unique=True,
        schema=S,
    )
    op.create_index(
        "uq_journey_definitions_active",
        "journey_definitions",
        ["tenant_id", "name"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "journey_instances",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("journey", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text()),
        sa.Column("anchors", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("state", JSONB(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.CheckConstraint(
            "status IN ('running','paused','exited','completed')", name="status_known"
        ),
        schema=S,
    )
    op.create_index(
        "ix_journey_instances_customer",
        "journey_instances",
        ["tenant_id", "customer_id", "status"],
        schema=S,
    )
    op.create_table(
        "journey_transitions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.Column("journey", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("from_stage", sa.Text()),
        sa.Column("to_stage", sa.Text()),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", TS, nullable=False),
        schema=S,
    )
    op.create_index(
        "ix_journey_transitions_instance",
        "journey_transitions",
        ["tenant_id", "instance_id", "id"],
        schema=S,
    )
    op.create_index(
        "ix_journey_transitions_funnel",
        "journey_transitions",
        ["tenant_id", "journey", "at"],
        schema=S,
    )
    op.create_table(
        "journey_timers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("due_at", TS, nullable=False),
        sa.Column("payload", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("fired_at", TS),
        sa.CheckConstraint("state IN ('pending','fired','cancelled')", name="state_known"),
        schema=S,
    )
    # The claim query scans only pending timers by due time.
    op.create_index(
        "ix_journey_timers_due",
        "journey_timers",
        ["due_at"],
        schema=S,
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_index(
        "ix_journey_timers_instance",
        "journey_timers",
        ["tenant_id", "instance_id", "state"],
        schema=S,
    )
    op.create_table(
        "goal_conversions",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("instance_id", sa.Text(), primary_key=True),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("journey", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("converted_at", TS, nullable=False),
        schema=S,
    )
    op.create_index(
        "ix_goal_conversions_journey",
        "goal_conversions",
        ["tenant_id", "journey", "version"],
        schema=S,
    )


def downgrade() -> None:
    for name in (
        "goal_conversions",
        "journey_timers",
        "journey_transitions",
        "journey_instances",
        "journey_definitions",
        "customer_profiles",
    ):
        op.drop_table(name, schema=S)
    drop_platform_tables(op, tables, api_keys)
