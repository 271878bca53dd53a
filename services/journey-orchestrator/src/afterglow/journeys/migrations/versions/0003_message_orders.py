"""Messaging's own order book and customer totals (template variables), and the tenant's
shop name.

Revision ID: 0003_message_orders
Revises: 0002_messaging
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_message_orders"
down_revision = "0002_messaging"
branch_labels = None
depends_on = None

SCHEMA = "journeys"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "message_orders",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("order_number", sa.Text()),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("placed_at", TZ, nullable=False),
        sa.Column("items", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "order_id", name="pk_message_orders"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_message_orders_customer",
        "message_orders",
        ["tenant_id", "customer_id"],
        schema=SCHEMA,
    )
    for column in (
        sa.Column("orders_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total_spent_minor", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("currency", sa.Text()),
    ):
        op.add_column("message_contacts", column, schema=SCHEMA)
    op.add_column("messaging_settings", sa.Column("shop_name", sa.Text()), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("messaging_settings", "shop_name", schema=SCHEMA)
    for name in ("currency", "total_spent_minor", "orders_count"):
        op.drop_column("message_contacts", name, schema=SCHEMA)
    op.drop_table("message_orders", schema=SCHEMA)
