"""referrals: a partial index on held referrals

The review queue (``GET /v1/referrals?state=held``) reads a tenant's held referrals,
oldest first; they are few among all its referrals, so a partial index finds them
without reading the rest.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

S = "referrals"


def upgrade() -> None:
    op.create_index(
        "ix_referrals_held",
        "referrals",
        ["tenant_id", "placed_at"],
        schema=S,
        postgresql_where=sa.text("state = 'held'"),
    )


def downgrade() -> None:
    op.drop_index("ix_referrals_held", table_name="referrals", schema=S)
