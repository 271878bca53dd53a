"""The SNS topic whose Amazon SES bounce and complaint notifications a tenant accepts.

Revision ID: 0006_ses_topic
Revises: 0005_channels
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_ses_topic"
down_revision = "0005_channels"
branch_labels = None
depends_on = None

SCHEMA = "journeys"


def upgrade() -> None:
    op.add_column("messaging_settings", sa.Column("ses_topic_arn", sa.Text()), schema=SCHEMA)


def downgrade() -> None:
    op.drop_column("messaging_settings", "ses_topic_arn", schema=SCHEMA)
