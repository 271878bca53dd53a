"""Wake the dispatcher when a message is queued: a statement-level trigger NOTIFYs
``afterglow_messages_journeys`` on every INSERT into journeys.messages (delivered on
commit, one per statement), so a message leaves within milliseconds instead of at the
dispatcher's next poll.

Revision ID: 0007_message_notify
Revises: 0006_ses_topic
"""

from alembic import op

revision = "0007_message_notify"
down_revision = "0006_ses_topic"
branch_labels = None
depends_on = None

# Kept in step with afterglow.journeys.messaging.store.NOTIFY_CHANNEL.
CHANNEL = "afterglow_messages_journeys"


def upgrade() -> None:
    op.execute(
        "CREATE FUNCTION journeys.notify_messages() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN PERFORM pg_notify('{CHANNEL}', ''); RETURN NULL; END $$;"
    )
    op.execute(
        "CREATE TRIGGER messages_notify AFTER INSERT ON journeys.messages "
        "FOR EACH STATEMENT EXECUTE FUNCTION journeys.notify_messages();"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS messages_notify ON journeys.messages")
    op.execute("DROP FUNCTION IF EXISTS journeys.notify_messages()")
