"""ingest: deliveries carry the fetch worker's attempts, next attempt and last error

BigCommerce deliveries are stored as fetch_pending and answered at once; a worker
fetches the order later, retrying with backoff, and marks the delivery failed (with
the reason) after the last attempt.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S = "ingest"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "deliveries",
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        schema=S,
    )
    op.add_column("deliveries", sa.Column("next_attempt_at", TZ), schema=S)
    op.add_column("deliveries", sa.Column("last_error", sa.Text), schema=S)
    op.create_index(
        "ix_deliveries_fetch_due",
        "deliveries",
        ["next_attempt_at"],
        schema=S,
        postgresql_where=sa.text("status = 'fetch_pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_fetch_due", "deliveries", schema=S)
    op.drop_column("deliveries", "last_error", schema=S)
    op.drop_column("deliveries", "next_attempt_at", schema=S)
    op.drop_column("deliveries", "attempts", schema=S)
