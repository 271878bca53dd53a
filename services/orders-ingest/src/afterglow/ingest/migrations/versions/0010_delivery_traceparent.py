"""ingest: the trace context of the request that delivered each delivery

The processing worker applies stored deliveries in batches, off the request; without
the request's traceparent stored with the delivery, the events it emits would start
traces of their own and a webhook's trace would end at its 200.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

S = "ingest"


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("traceparent", sa.Text()), schema=S)


def downgrade() -> None:
    op.drop_column("deliveries", "traceparent", schema=S)
