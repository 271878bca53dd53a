"""ingest: index the deliveries the processing worker has yet to apply

Webhook receivers store the raw delivery as ``received`` and answer; the processing
worker claims ``received`` deliveries oldest first. Only those few rows are indexed,
so its claim stays cheap however many deliveries are kept.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

S = "ingest"


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_received",
        "deliveries",
        ["received_at", "id"],
        schema=S,
        postgresql_where=sa.text("status = 'received'"),
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_received", table_name="deliveries", schema=S)
