"""Platform tables and the journey engine's tables.

Revision ID: 0001_journeys
Revises:
"""

from alembic import op

from afterglow.journeys.models import api_keys, tables
from afterglow.kit.migrations import create_platform_tables, drop_platform_tables

revision = "0001_journeys"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables(op, tables, api_keys)
    # The journey engine's tables are created below (explicit op.create_table calls).


def downgrade() -> None:
    drop_platform_tables(op, tables, api_keys)
