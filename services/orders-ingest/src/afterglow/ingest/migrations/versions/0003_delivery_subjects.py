"""ingest: deliveries record the customers they spoke about (data access requests)

A customer's export lists the raw deliveries about them; the outbox keeps event keys
for a day only, so the delivery keeps its events' subjects itself. Deliveries stored
before this revision have none (their orders are still exported from the order book).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

S = "ingest"


def upgrade() -> None:
    op.add_column(
        "deliveries",
        sa.Column(
            "subjects", postgresql.ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'")
        ),
        schema=S,
    )


def downgrade() -> None:
    op.drop_column("deliveries", "subjects", schema=S)
