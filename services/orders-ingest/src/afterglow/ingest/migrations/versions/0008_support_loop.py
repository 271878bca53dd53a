"""ingest: customer links, ticket customers, helpdesk connections, escalations

One customer across platform and helpdesk: the email and phone hashes seen on orders
link to the customer id (``customer_links``); each helpdesk ticket keeps the customer
it was resolved to, or why it was not (``ticket_customers``). A detractor's escalation
becomes a ticket in the tenant's helpdesk (``helpdesk_connections``, ``escalations``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

S = "ingest"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "customer_links",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("value_hash", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("seen_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "value_hash", name="pk_customer_links"),
        schema=S,
    )
    op.create_index(
        "ix_customer_links_subject", "customer_links", ["tenant_id", "subject"], schema=S
    )
    op.create_table(
        "ticket_customers",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("ticket_id", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("resolved_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("first_seen_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "ticket_id", name="pk_ticket_customers"),
        schema=S,
    )
    op.create_table(
        "helpdesk_connections",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("api_base_url", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=True),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_helpdesk_connections"),
        schema=S,
    )
    op.create_table(
        "escalations",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("escalation_id", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("priority", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=True),
        sa.Column("survey_id", sa.Text(), nullable=True),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("requested_at", TZ, nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TZ, nullable=True),
        sa.Column("helpdesk", sa.Text(), nullable=True),
        sa.Column("ticket_ref", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("tenant_id", "escalation_id", name="pk_escalations"),
        schema=S,
    )
    op.create_index(
        "ix_escalations_due",
        "escalations",
        ["next_attempt_at"],
        schema=S,
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_escalations_due", table_name="escalations", schema=S)
    op.drop_table("escalations", schema=S)
    op.drop_table("helpdesk_connections", schema=S)
    op.drop_table("ticket_customers", schema=S)
    op.drop_index("ix_customer_links_subject", table_name="customer_links", schema=S)
    op.drop_table("customer_links", schema=S)
