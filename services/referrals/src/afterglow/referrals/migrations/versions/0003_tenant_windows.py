"""referrals: per-tenant return and attribution windows

A tenant may set its own return window (0-365 days) and attribution window (1-365 days);
null keeps the service default. The share base URL becomes optional for the same
reason: a tenant may set a window without having set its shop URL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

S = "referrals"


def upgrade() -> None:
    op.add_column("tenant_settings", sa.Column("return_window_days", sa.Integer()), schema=S)
    op.add_column("tenant_settings", sa.Column("attribution_window_days", sa.Integer()), schema=S)
    op.create_check_constraint(
        "return_window_days_range",
        "tenant_settings",
        "return_window_days BETWEEN 0 AND 365",
        schema=S,
    )
    op.create_check_constraint(
        "attribution_window_days_range",
        "tenant_settings",
        "attribution_window_days BETWEEN 1 AND 365",
        schema=S,
    )
    op.alter_column("tenant_settings", "share_base_url", nullable=True, schema=S)


def downgrade() -> None:
    # A row without a share URL holds only windows, which this downgrade drops anyway.
    op.execute(f"DELETE FROM {S}.tenant_settings WHERE share_base_url IS NULL")
    op.alter_column("tenant_settings", "share_base_url", nullable=False, schema=S)
    op.drop_column("tenant_settings", "attribution_window_days", schema=S)
    op.drop_column("tenant_settings", "return_window_days", schema=S)
