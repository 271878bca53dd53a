"""ingest: the order book counts each customer's orders and keeps presentment totals

``customer_order_counts`` is the one definition of a customer's order count carried in
order.placed (``customer_orders_count``); it starts from the orders already in the
book. Orders keep their total in the customer's currency, to relate refunds stated in it.

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

S = "ingest"


def upgrade() -> None:
    op.add_column("orders", sa.Column("presentment_amount", sa.BigInteger()), schema=S)
    op.add_column("orders", sa.Column("presentment_currency", sa.Text()), schema=S)
    op.add_column("orders", sa.Column("customer_order_seq", sa.Integer()), schema=S)
    op.create_table(
        "customer_order_counts",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "subject", name=op.f("pk_customer_order_counts")),
        schema=S,
    )
    # Orders already in the book count (an approximation for the few orders stored
    # without an order.placed: cancelled before we saw them placed).
    op.execute(
        "INSERT INTO ingest.customer_order_counts (tenant_id, subject, orders) "
        "SELECT tenant_id, subject, count(*) FROM ingest.orders GROUP BY tenant_id, subject"
    )


def downgrade() -> None:
    op.drop_table("customer_order_counts", schema=S)
    for name in ("customer_order_seq", "presentment_currency", "presentment_amount"):
        op.drop_column("orders", name, schema=S)
