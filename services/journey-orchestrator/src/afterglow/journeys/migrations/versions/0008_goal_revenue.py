"""The converting order and its total on each goal conversion, so the dashboard's
revenue of goal orders is one GROUP BY over goal_conversions; indexes for the journey
metrics' period. Conversions recorded
before this revision keep NULLs (counted as conversions, no revenue).

Revision ID: 0008_goal_revenue
Revises: 0007_message_notify
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_goal_revenue"
down_revision = "0007_message_notify"
branch_labels = None
depends_on = None

SCHEMA = "journeys"


def upgrade() -> None:
    op.add_column("goal_conversions", sa.Column("order_id", sa.Text()), schema=SCHEMA)
    op.add_column("goal_conversions", sa.Column("amount_minor", sa.BigInteger()), schema=SCHEMA)
    op.add_column("goal_conversions", sa.Column("currency", sa.Text()), schema=SCHEMA)
    # The metrics read conversions by their time, and instances by their start, within
    # a tenant (without it GET /v1/metrics/journeys reads every instance of the tenant).
    op.create_index(
        "ix_goal_conversions_converted",
        "goal_conversions",
        ["tenant_id", "converted_at"],
        schema=SCHEMA,
    )
    op.create_index(
        "ix_journey_instances_started",
        "journey_instances",
        ["tenant_id", "started_at"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_index("ix_journey_instances_started", "journey_instances", schema=SCHEMA)
    op.drop_index("ix_goal_conversions_converted", "goal_conversions", schema=SCHEMA)
    for name in ("currency", "amount_minor", "order_id"):
        op.drop_column("goal_conversions", name, schema=SCHEMA)
