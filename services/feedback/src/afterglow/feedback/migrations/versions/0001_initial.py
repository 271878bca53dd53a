"""feedback: surveys, responses, orders seen, referral links, reviews, tenant settings

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from afterglow.feedback.models import api_keys, tables
from afterglow.kit.migrations import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

S = "feedback"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    create_platform_tables(op, tables, api_keys)
    op.create_table(
        "tenant_settings",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text()),
        sa.Column("brand_color", sa.Text()),
        sa.Column("manual_moderation", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        sa.Column("updated_at", TS, nullable=False),
        schema=S,
    )
    op.create_table(
        "surveys",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text()),
        sa.Column("ticket_id", sa.Text()),
        sa.Column("sent_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("reminders_sent", sa.SmallInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("first_answered_at", TS),
        sa.Column("last_answered_at", TS),
        sa.UniqueConstraint("tenant_id", "request_id", name="uq_surveys_tenant_request"),
        schema=S,
    )
    op.create_index("ix_surveys_tenant_kind_sent", "surveys", ["tenant_id", "kind", "sent_at"], schema=S)
    op.create_table(
        "survey_reminders",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("request_id", sa.Text(), primary_key=True),
        sa.Column("survey_id", sa.Text(), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        schema=S,
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("survey_id", sa.Text()),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("score", sa.SmallInteger(), nullable=False),
        sa.Column("comment", sa.Text()),
        sa.Column("order_id", sa.Text()),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("external_id", sa.Text()),
        sa.Column("responded_at", TS, nullable=False),
        sa.Column("superseded", sa.Boolean(), nullable=False, server_default=sa.text("false")),
        schema=S,
    )
    op.create_index(
        "ix_responses_metrics",
        "responses",
        ["tenant_id", "kind", "responded_at"],
        schema=S,
        postgresql_include=["score", "order_id"],
        postgresql_where=sa.text("NOT superseded"),
    )
    op.create_index("ix_responses_survey", "responses", ["survey_id"], schema=S)
    op.create_index(
        "uq_responses_external",
        "responses",
        ["tenant_id", "external_id"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("external_id IS NOT NULL"),
    )
    op.create_table(
        "orders",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("order_id", sa.Text(), primary_key=True),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("placed_at", TS, nullable=False),
        schema=S,
    )
    op.create_table(
        "order_items",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("order_id", sa.Text(), primary_key=True),
        sa.Column("line_no", sa.SmallInteger(), primary_key=True),
        sa.Column("sku", sa.Text()),
        sa.Column("product_id", sa.Text()),
        sa.Column("title", sa.Text()),
        schema=S,
    )
    op.create_index("ix_order_items_sku", "order_items", ["tenant_id", "sku", "order_id"], schema=S)
    op.create_table(
        "referral_links",
        sa.Column("tenant_id", sa.Text(), primary_key=True),
        sa.Column("customer_id", sa.Text(), primary_key=True),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("share_url", sa.Text(), nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        schema=S,
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text()),
        sa.Column("sku", sa.Text()),
        sa.Column("product_id", sa.Text()),
        sa.Column("rating", sa.SmallInteger(), nullable=False),
        sa.Column("title", sa.Text()),
        sa.Column("body", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("moderation_reasons", sa.Text()),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.Text()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("moderated_at", TS),
        sa.Column("published_at", TS),
        schema=S,
    )
    op.create_index("ix_reviews_product", "reviews", ["tenant_id", "sku", "status"], schema=S)
    op.create_index("ix_reviews_status", "reviews", ["tenant_id", "status", "created_at"], schema=S)
    op.create_index(
        "uq_reviews_dedupe",
        "reviews",
        ["tenant_id", "dedupe_key"],
        unique=True,
        schema=S,
        postgresql_where=sa.text("dedupe_key IS NOT NULL"),
    )


def downgrade() -> None:
    for name in (
        "reviews",
        "referral_links",
        "order_items",
        "orders",
        "responses",
        "survey_reminders",
        "surveys",
        "tenant_settings",
    ):
        op.drop_table(name, schema=S)
    drop_platform_tables(op, tables, api_keys)
