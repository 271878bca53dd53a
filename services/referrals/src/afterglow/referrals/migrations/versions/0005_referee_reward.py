"""referrals: a per-tenant referee reward

A tenant may choose the friend's reward: a percentage (1-100) or a fixed amount (minor
units and currency) off, valid 1-365 days. A null kind keeps the service's default (10%
off for 30 days); the columns are set and cleared together (``referee_reward_complete``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

S = "referrals"
COLUMNS = (
    ("referee_reward_kind", sa.Text()),
    ("referee_percent_off", sa.Integer()),
    ("referee_amount", sa.BigInteger()),
    ("referee_currency", sa.Text()),
    ("referee_valid_days", sa.Integer()),
)
# As models.REFEREE_REWARD_COMPLETE when this revision was written (a migration keeps
# what it did, whatever the model says later).
REWARD_COMPLETE = (
    "(referee_reward_kind IS NULL AND referee_percent_off IS NULL AND referee_amount IS NULL"
    " AND referee_currency IS NULL AND referee_valid_days IS NULL)"
    " OR (referee_reward_kind = 'percentage' AND referee_percent_off IS NOT NULL"
    " AND referee_amount IS NULL AND referee_currency IS NULL)"
    " OR (referee_reward_kind = 'fixed_amount' AND referee_amount > 0"
    " AND referee_currency IS NOT NULL AND referee_percent_off IS NULL)"
)


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("tenant_settings", sa.Column(name, type_), schema=S)
    op.create_check_constraint(
        "referee_percent_off_range",
        "tenant_settings",
        "referee_percent_off BETWEEN 1 AND 100",
        schema=S,
    )
    op.create_check_constraint(
        "referee_valid_days_range",
        "tenant_settings",
        "referee_valid_days BETWEEN 1 AND 365",
        schema=S,
    )
    op.create_check_constraint(
        "referee_reward_complete", "tenant_settings", REWARD_COMPLETE, schema=S
    )


def downgrade() -> None:
    # Dropping the columns drops their constraints with them.
    for name, _ in reversed(COLUMNS):
        op.drop_column("tenant_settings", name, schema=S)
