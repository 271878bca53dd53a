"""ingest: platform tables, tenants, secrets, deliveries, facts, orders, idempotency keys

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from afterglow.ingest.models import api_keys, tables
from afterglow.kit.migrations import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

S = "ingest"
TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    create_platform_tables(op, tables, api_keys)
    op.create_table(
        "tenants",
        sa.Column("tenant_id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("shopify_shop_domain", sa.Text, unique=True),
        sa.Column("woocommerce_store_url", sa.Text),
        sa.Column("bigcommerce_store_hash", sa.Text),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        schema=S,
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ),
        schema=S,
    )
    op.create_index(
        "ix_webhook_secrets_tenant_platform", "webhook_secrets", ["tenant_id", "platform"], schema=S
    )
    op.create_table(
        "platform_connections",
        sa.Column("tenant_id", sa.Text, primary_key=True),
        sa.Column("platform", sa.Text, primary_key=True),
        sa.Column("api_base_url", sa.Text, nullable=False),
        sa.Column("access_token", sa.Text, nullable=False),
        sa.Column("watermark", TZ),
        sa.Column("last_run_at", TZ),
        sa.Column("last_error", sa.Text),
        schema=S,
    )
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("dedupe_key", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("headers", pg.JSONB, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("event_ids", pg.ARRAY(sa.Text), nullable=False),
        sa.Column("replays", sa.Integer, nullable=False, server_default="0"),
        sa.UniqueConstraint("tenant_id", "platform", "dedupe_key", name="uq_deliveries_dedupe"),
        schema=S,
    )
    op.create_index(
        "ix_deliveries_tenant_received", "deliveries", ["tenant_id", "received_at"], schema=S
    )
    op.create_table(
        "order_facts",
        sa.Column("tenant_id", sa.Text, primary_key=True),
        sa.Column("fact_key", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("delivery_id", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        schema=S,
    )
    op.create_table(
        "orders",
        sa.Column("tenant_id", sa.Text, primary_key=True),
        sa.Column("order_id", sa.Text, primary_key=True),
        sa.Column("platform_order_id", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("total_amount", sa.BigInteger),
        sa.Column("currency", sa.Text),
        schema=S,
    )
    op.create_index("ix_orders_platform_id", "orders", ["tenant_id", "platform_order_id"], schema=S)
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("route", sa.Text, nullable=False),
        sa.Column("body_hash", sa.Text, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", pg.JSONB, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        schema=S,
    )


def downgrade() -> None:
    for name in (
        "idempotency_keys",
        "orders",
        "order_facts",
        "deliveries",
        "platform_connections",
        "webhook_secrets",
        "tenants",
    ):
        op.drop_table(name, schema=S)
    drop_platform_tables(op, tables, api_keys)
