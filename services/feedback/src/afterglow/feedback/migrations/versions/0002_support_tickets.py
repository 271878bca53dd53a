"""feedback: support tickets (first-response and resolution times, CSAT after a solve)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S = "feedback"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "support_tickets",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("ticket_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("helpdesk", sa.Text()),
        sa.Column("channel", sa.Text()),
        sa.Column("opened_at", TS),
        sa.Column("first_response_at", TS),
        sa.Column("resolved_at", TS),
        sa.Column("csat_status", sa.Text()),
        sa.Column("csat_due_at", TS),
        sa.Column("csat_reason", sa.Text()),
        sa.PrimaryKeyConstraint("tenant_id", "ticket_id", name="pk_support_tickets"),
        schema=S,
    )
    op.create_index(
        "ix_support_tickets_csat_due",
        "support_tickets",
        ["csat_due_at"],
        schema=S,
        postgresql_where=sa.text("csat_status = 'due'"),
    )
    op.create_index(
        "ix_support_tickets_opened", "support_tickets", ["tenant_id", "opened_at"], schema=S
    )


def downgrade() -> None:
    op.drop_index("ix_support_tickets_opened", table_name="support_tickets", schema=S)
    op.drop_index("ix_support_tickets_csat_due", table_name="support_tickets", schema=S)
    op.drop_table("support_tickets", schema=S)
