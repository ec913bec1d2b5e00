"""event.urgent_done_at: an urgent event's welcome commits before the rest of its handlers (issue 16)

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

import bot.db.types


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (no table copy on SQLite): the event table is the largest there is
    op.add_column('event', sa.Column('urgent_done_at', bot.db.types.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('event') as b:
        b.drop_column('urgent_done_at')
