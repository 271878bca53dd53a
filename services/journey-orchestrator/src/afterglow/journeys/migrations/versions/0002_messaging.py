"""Messaging tables: contacts, templates, tenant settings, messages and their decisions.

Revision ID: 0002_messaging
Revises: 0001_journeys
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_messaging"
down_revision = "0001_journeys"
branch_labels = None
depends_on = None

SCHEMA = "journeys"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "message_contacts",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("email", sa.Text()),
        sa.Column("phone", sa.Text()),
        sa.Column("first_name", sa.Text()),
        sa.Column("locale", sa.Text()),
        sa.Column("timezone", sa.Text()),
        sa.Column("accepts_marketing", sa.Boolean()),
        sa.Column("email_unsubscribed_at", TZ),
        sa.Column("sms_unsubscribed_at", TZ),
        sa.Column("erased_at", TZ),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "customer_id", name="pk_message_contacts"),
        schema=SCHEMA,
    )
    op.create_table(
        "message_templates",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text()),
        sa.Column("html", sa.Text()),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "name", "channel", name="pk_message_templates"),
        schema=SCHEMA,
    )
    op.create_table(
        "messaging_settings",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("endpoint_url", sa.Text()),
        sa.Column("endpoint_secret", sa.Text()),
        sa.Column("quiet_hours_start", sa.Text(), nullable=False),
        sa.Column("quiet_hours_end", sa.Text(), nullable=False),
        sa.Column("frequency_cap", sa.Integer(), nullable=False),
        sa.Column("frequency_window_days", sa.Integer(), nullable=False),
        sa.Column("default_channel", sa.Text(), nullable=False),
        sa.Column("default_timezone", sa.Text(), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_messaging_settings"),
        schema=SCHEMA,
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("priority", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text()),
        sa.Column("variables", postgresql.JSONB(), nullable=False),
        sa.Column("order_id", sa.Text()),
        sa.Column("not_before", TZ),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TZ, nullable=False),
        sa.Column("counted_at", TZ),
        sa.Column("last_attempt_at", TZ),
        sa.Column("sent_at", TZ),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("request_key", sa.LargeBinary(), nullable=False),
        sa.Column("request_value", sa.LargeBinary(), nullable=False),
        sa.Column("request_headers", postgresql.JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("tenant_id", "request_id", name="uq_messages_tenant_request"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_messages_due",
        "messages",
        ["next_attempt_at"],
        schema=SCHEMA,
        postgresql_where=sa.text("status IN ('queued','deferred')"),
    )
    op.create_index(
        "ix_messages_customer",
        "messages",
        ["tenant_id", "customer_id", "created_at"],
        schema=SCHEMA,
    )
    op.create_table(
        "message_decisions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.PrimaryKeyConstraint("id", name="pk_message_decisions"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_message_decisions_message",
        "message_decisions",
        ["tenant_id", "message_id"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("message_decisions", schema=SCHEMA)
    op.drop_table("messages", schema=SCHEMA)
    op.drop_table("messaging_settings", schema=SCHEMA)
    op.drop_table("message_templates", schema=SCHEMA)
    op.drop_table("message_contacts", schema=SCHEMA)
