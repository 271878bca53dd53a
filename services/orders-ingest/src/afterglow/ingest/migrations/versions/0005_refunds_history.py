"""ingest: refunded totals per order, and the tenant's late-order limit

``orders.refunded_amount``: the sum of the refunds emitted for an order, so that a
refund which brings the sum up to the order total is a full refund (a journey exits on
it) even when each refund alone is partial. ``tenants.late_order_days``: a live event
about an order placed longer ago than this is marked historical (recorded and counted,
no journey, survey or message).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

S = "ingest"


def upgrade() -> None:
    op.add_column(
        "orders",
        sa.Column("refunded_amount", sa.BigInteger, nullable=False, server_default="0"),
        schema=S,
    )
    op.add_column(
        "tenants",
        sa.Column("late_order_days", sa.Integer, nullable=False, server_default="30"),
        schema=S,
    )


def downgrade() -> None:
    op.drop_column("tenants", "late_order_days", schema=S)
    op.drop_column("orders", "refunded_amount", schema=S)
