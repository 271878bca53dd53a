"""Journey instances may be ``skipped``: the record of a trigger that started nothing
(a live delivery about an order older than the tenant's limit), with its one ``skip``
transition saying why.

Revision ID: 0004_skipped_instances
Revises: 0003_message_orders
"""

from alembic import op

revision = "0004_skipped_instances"
down_revision = "0003_message_orders"
branch_labels = None
depends_on = None

TABLE = "journeys.journey_instances"
NAME = "ck_journey_instances_status_known"


def upgrade() -> None:
    op.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT {NAME}")
    op.execute(
        f"ALTER TABLE {TABLE} ADD CONSTRAINT {NAME} "
        "CHECK (status IN ('running','paused','exited','completed','skipped'))"
    )


def downgrade() -> None:
    op.execute(f"DELETE FROM {TABLE} WHERE status = 'skipped'")
    op.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT {NAME}")
    op.execute(
        f"ALTER TABLE {TABLE} ADD CONSTRAINT {NAME} "
        "CHECK (status IN ('running','paused','exited','completed'))"
    )
