"""ingest: reward codes in the tenants' shops (discount.requested and friends)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

S = "ingest"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "shop_discounts",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("value_kind", sa.Text(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger()),
        sa.Column("currency", sa.Text()),
        sa.Column("percent", sa.Integer()),
        sa.Column("starts_at", TZ, nullable=False),
        sa.Column("ends_at", TZ),
        sa.Column("announce", postgresql.JSONB()),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("platform", sa.Text()),
        sa.Column("platform_discount_id", sa.Text()),
        sa.Column("revoke_reason", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TZ),
        sa.Column("last_error", sa.Text()),
        sa.Column("used_order_id", sa.Text()),
        sa.Column("used_at", TZ),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "code", name=op.f("pk_shop_discounts")),
        schema=S,
    )
    op.create_index(
        "ix_shop_discounts_due",
        "shop_discounts",
        ["next_attempt_at"],
        schema=S,
        postgresql_where=sa.text("state IN ('creating', 'disabling')"),
    )
    op.create_index(
        "ix_shop_discounts_ends",
        "shop_discounts",
        ["ends_at"],
        schema=S,
        postgresql_where=sa.text("state = 'active'"),
    )
    op.create_index(
        "ix_shop_discounts_tenant_updated",
        "shop_discounts",
        ["tenant_id", "updated_at"],
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("shop_discounts", schema=S)
