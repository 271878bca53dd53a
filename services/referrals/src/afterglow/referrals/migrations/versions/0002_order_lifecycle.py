"""referrals: what happened to an order (fulfilled, refunded, cancelled) and erased codes

An attribution made after the fact (POST /v1/attributions) reads these instead of
missing the events that came before it; an erased advocate's code is deactivated.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S = "referrals"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("orders", sa.Column("fulfilled_at", TS), schema=S)
    op.add_column(
        "orders",
        sa.Column("refunded_amount", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        schema=S,
    )
    op.add_column("orders", sa.Column("refunded_at", TS), schema=S)
    op.add_column("orders", sa.Column("cancelled_at", TS), schema=S)
    op.add_column("codes", sa.Column("deactivated_at", TS), schema=S)


def downgrade() -> None:
    op.drop_column("codes", "deactivated_at", schema=S)
    op.drop_column("orders", "cancelled_at", schema=S)
    op.drop_column("orders", "refunded_at", schema=S)
    op.drop_column("orders", "refunded_amount", schema=S)
    op.drop_column("orders", "fulfilled_at", schema=S)
