"""referrals: codes, orders seen, referrals (conversions), tenant settings

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from afterglow.kit.migrations import create_platform_tables, drop_platform_tables
from afterglow.referrals.models import api_keys, tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

S = "referrals"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    create_platform_tables(op, tables, api_keys)
    op.create_table(
        "codes",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("advocate_customer_id", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("invited_at", TS, nullable=False),
        sa.Column("invitations", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("invite_requested_at", TS),
        sa.PrimaryKeyConstraint("id", name="pk_codes"),
        sa.UniqueConstraint("tenant_id", "code", name="uq_codes_tenant_code"),
        sa.UniqueConstraint("tenant_id", "advocate_customer_id", name="uq_codes_tenant_advocate"),
        schema=S,
    )
    op.create_table(
        "orders",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("placed_at", TS, nullable=False),
        sa.Column("total_amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("email_hash", sa.Text()),
        sa.Column("phone_hash", sa.Text()),
        sa.Column("shipping_address_hash", sa.Text()),
        sa.Column("erased_at", TS),
        sa.PrimaryKeyConstraint("tenant_id", "order_id", name="pk_orders"),
        schema=S,
    )
    op.create_index("ix_orders_customer", "orders", ["tenant_id", "customer_id", "placed_at"], schema=S)
    op.create_index("ix_orders_email_hash", "orders", ["tenant_id", "email_hash"], schema=S)
    op.create_table(
        "referrals",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("code_id", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("advocate_customer_id", sa.Text(), nullable=False),
        sa.Column("referee_customer_id", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("order_total", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("placed_at", TS, nullable=False),
        sa.Column("via", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("detail", sa.Text()),
        sa.Column("referee_reward_code", sa.Text()),
        sa.Column("attributed_at", TS, nullable=False),
        sa.Column("fulfilled_at", TS),
        sa.Column("confirm_due_at", TS),
        sa.Column("decided_at", TS),
        sa.Column("refunded_amount", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("id", name="pk_referrals"),
        sa.UniqueConstraint("tenant_id", "order_id", name="uq_referrals_tenant_order"),
        schema=S,
    )
    op.create_index("ix_referrals_advocate", "referrals", ["tenant_id", "advocate_customer_id", "placed_at"], schema=S)
    op.create_index("ix_referrals_code", "referrals", ["tenant_id", "code_id", "placed_at"], schema=S)
    op.create_index(
        "ix_referrals_due",
        "referrals",
        ["confirm_due_at"],
        schema=S,
        postgresql_where=sa.text("state = 'pending' AND confirm_due_at IS NOT NULL"),
    )
    op.create_table(
        "tenant_settings",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("share_base_url", sa.Text(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_tenant_settings"),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("tenant_settings", schema=S)
    op.drop_table("referrals", schema=S)
    op.drop_table("orders", schema=S)
    op.drop_table("codes", schema=S)
    drop_platform_tables(op, tables, api_keys)
