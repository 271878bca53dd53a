"""ingest: when each order was placed, for the order-book metrics

The console's dashboard asks ingest for orders, customers, repeat purchase rate and
retention cohorts over a period; each needs the order's placing time. Orders stored
before this revision have none and are left out of those metrics (they are not
guessed from the delivery's receive time, which for a history import is years off).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

S = "ingest"


def upgrade() -> None:
    op.add_column("orders", sa.Column("placed_at", sa.DateTime(timezone=True)), schema=S)
    op.create_index("ix_orders_placed_at", "orders", ["tenant_id", "placed_at"], schema=S)


def downgrade() -> None:
    op.drop_index("ix_orders_placed_at", table_name="orders", schema=S)
    op.drop_column("orders", "placed_at", schema=S)
