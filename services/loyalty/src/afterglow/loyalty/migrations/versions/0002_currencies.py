"""loyalty: exchange rates, and orders priced in the program's currency

Orders placed before this revision were earned as if their amount were in the program's
currency. They are marked priced at factor 1 in their own currency: tier spend counts
only orders priced in the program's currency, so a foreign order mispriced before stops
counting towards tiers (its points stay; the ledger is append-only).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

S = "loyalty"


def upgrade() -> None:
    op.create_table(
        "exchange_rates",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("quote", sa.Text(), nullable=False),
        sa.Column("rate", sa.Numeric(24, 10), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "currency", "quote", name=op.f("pk_exchange_rates")),
        schema=S,
    )
    op.add_column("orders", sa.Column("other_minor", sa.BigInteger()), schema=S)
    op.add_column("orders", sa.Column("other_currency", sa.Text()), schema=S)
    op.add_column("orders", sa.Column("value_currency", sa.Text()), schema=S)
    op.add_column("orders", sa.Column("fx_factor", sa.Numeric(36, 16)), schema=S)
    op.add_column("orders", sa.Column("fx_rate", sa.Numeric(24, 10)), schema=S)
    op.add_column("orders", sa.Column("fx_as_of", sa.Date()), schema=S)
    op.add_column("orders", sa.Column("unpriced_reason", sa.Text()), schema=S)
    op.execute("UPDATE loyalty.orders SET value_currency = currency, fx_factor = 1")


def downgrade() -> None:
    for name in (
        "unpriced_reason",
        "fx_as_of",
        "fx_rate",
        "fx_factor",
        "value_currency",
        "other_currency",
        "other_minor",
    ):
        op.drop_column("orders", name, schema=S)
    op.drop_table("exchange_rates", schema=S)
