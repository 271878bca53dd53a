"""Messaging tables.

Revision ID: 0002_messaging
Revises: 0001_journeys
"""

revision = "0002_messaging"
down_revision = "0001_journeys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # messaging's tables (explicit op.create_table calls)


def downgrade() -> None:
    pass
