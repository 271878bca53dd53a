"""loyalty: rules, accounts, lots, entries, orders, redemptions, platform tables

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from afterglow.kit.migrations import create_platform_tables, drop_platform_tables
from afterglow.loyalty.models import api_keys, tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables(op, tables, api_keys)
    op.create_table('accounts',
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('available', sa.BigInteger(), nullable=False),
    sa.Column('pending', sa.BigInteger(), nullable=False),
    sa.Column('lifetime_earned', sa.BigInteger(), nullable=False),
    sa.Column('tier', sa.Text(), nullable=True),
    sa.Column('tier_review_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('orders_count', sa.Integer(), nullable=False),
    sa.Column('erased', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'customer_id', name=op.f('pk_accounts')),
    schema='loyalty'
    )
    op.create_table('entries',
    sa.Column('seq', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('pending_delta', sa.BigInteger(), nullable=False),
    sa.Column('available_delta', sa.BigInteger(), nullable=False),
    sa.Column('lot_id', sa.Text(), nullable=True),
    sa.Column('order_id', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('actor', sa.Text(), nullable=True),
    sa.Column('ref', sa.Text(), nullable=True),
    sa.Column('rule_snapshot', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_entries')),
    sa.UniqueConstraint('id'),
    schema='loyalty'
    )
    op.create_table('lots',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('source_id', sa.Text(), nullable=False),
    sa.Column('order_id', sa.Text(), nullable=True),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('clawed', sa.BigInteger(), nullable=False),
    sa.Column('remaining', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.Text(), nullable=False),
    sa.Column('earned_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('available_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('notify_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expiry_notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rule_snapshot', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lots')),
    sa.UniqueConstraint('tenant_id', 'source', 'source_id', name='uq_lots_source'),
    schema='loyalty'
    )
    op.create_table('orders',
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('order_id', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('total_minor', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.Text(), nullable=False),
    sa.Column('placed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('fulfilled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('refunded_minor', sa.BigInteger(), nullable=False),
    sa.Column('refund_ids', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('fully_refunded', sa.Boolean(), nullable=False),
    sa.Column('cancelled', sa.Boolean(), nullable=False),
    sa.Column('earned', sa.Boolean(), nullable=False),
    sa.Column('first_order', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'order_id', name=op.f('pk_orders')),
    schema='loyalty'
    )
    op.create_table('program_rules',
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('rules', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_program_rules')),
    schema='loyalty'
    )
    op.create_table('redemptions',
    sa.Column('id', sa.Text(), nullable=False),
    sa.Column('tenant_id', sa.Text(), nullable=False),
    sa.Column('customer_id', sa.Text(), nullable=False),
    sa.Column('idempotency_key', sa.Text(), nullable=False),
    sa.Column('request_hash', sa.Text(), nullable=False),
    sa.Column('reward_id', sa.Text(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('response', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_redemptions')),
    sa.UniqueConstraint('tenant_id', 'code', name='uq_redemptions_code'),
    sa.UniqueConstraint('tenant_id', 'customer_id', 'idempotency_key', name='uq_redemptions_key'),
    schema='loyalty'
    )
    op.create_index('ix_accounts_tier_review', 'accounts', ['tier_review_at'], unique=False, schema='loyalty', postgresql_where=sa.text('tier_review_at IS NOT NULL'))
    op.create_index('ix_entries_account', 'entries', ['tenant_id', 'customer_id', 'seq'], unique=False, schema='loyalty')
    op.create_index('ix_lots_account', 'lots', ['tenant_id', 'customer_id', 'state'], unique=False, schema='loyalty')
    op.create_index('ix_lots_expiry', 'lots', ['expires_at'], unique=False, schema='loyalty', postgresql_where=sa.text("state = 'available' AND remaining > 0"))
    op.create_index('ix_lots_notify', 'lots', ['notify_at'], unique=False, schema='loyalty', postgresql_where=sa.text("state = 'available' AND expiry_notified_at IS NULL"))
    op.create_index('ix_lots_due', 'lots', ['available_at'], unique=False, schema='loyalty', postgresql_where=sa.text("state = 'pending'"))
    op.create_index('ix_orders_customer', 'orders', ['tenant_id', 'customer_id', 'placed_at'], unique=False, schema='loyalty')


def downgrade() -> None:
    for name in ("redemptions", "orders", "lots", "entries", "accounts", "program_rules"):
        op.drop_table(name, schema="loyalty")
    drop_platform_tables(op, tables, api_keys)
