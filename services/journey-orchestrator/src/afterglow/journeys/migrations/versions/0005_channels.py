"""Channels per tenant and channel kind (webhook, SMTP, Twilio) with sealed credentials
and a token bucket; suppressed addresses (bounces, complaints, SMS STOP); the keys of the
provider event webhooks.

Revision ID: 0005_channels
Revises: 0004_skipped_instances
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_channels"
down_revision = "0004_skipped_instances"
branch_labels = None
depends_on = None

SCHEMA = "journeys"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "messaging_channels",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("config", postgresql.JSONB(), nullable=False),
        sa.Column("secret", sa.Text()),
        sa.Column("dkim_key", sa.Text()),
        sa.Column("rate_per_s", sa.Float()),
        sa.Column("tokens", sa.Float(), nullable=False, server_default="0"),
        sa.Column("tokens_at", TZ),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "channel", name="pk_messaging_channels"),
        schema=SCHEMA,
    )
    op.create_table(
        "message_suppressions",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("address_hash", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text()),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "channel", "address_hash", name="pk_message_suppressions"
        ),
        schema=SCHEMA,
    )
    op.add_column("messaging_settings", sa.Column("sendgrid_public_key", sa.Text()), schema=SCHEMA)
    op.add_column("messaging_settings", sa.Column("postmark_auth", sa.Text()), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("messaging_settings", "postmark_auth", schema=SCHEMA)
    op.drop_column("messaging_settings", "sendgrid_public_key", schema=SCHEMA)
    op.drop_table("message_suppressions", schema=SCHEMA)
    op.drop_table("messaging_channels", schema=SCHEMA)
