"""store.closed_at (sync --prune --apply), group_chat.dismissed_at, broadcast_task per (sender, store)

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import bot.db.types


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

OLD_UQ = ['day', 'slot', 'sender']
NEW_UQ = ['day', 'slot', 'sender', 'store_code']
NEW_NAME = 'uq_broadcast_task_day_slot_sender_store'


def _table(with_store: bool) -> sa.Table:
    """broadcast_task as it is, without its unique constraint: SQLite's batch mode recreates the table from
    this (0004 left the constraint unnamed, so it cannot be dropped by name there)."""
    cols = [sa.Column('id', sa.Integer(), primary_key=True),
            sa.Column('day', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
            sa.Column('slot', sqlmodel.sql.sqltypes.AutoString(length=5), nullable=False),
            sa.Column('sender', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
            sa.Column('msgid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
            sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
            sa.Column('created_at', bot.db.types.UTCDateTime(timezone=True), nullable=False),
            sa.Column('expires_at', bot.db.types.UTCDateTime(timezone=True), nullable=True),
            sa.Column('reminds', sa.JSON(), nullable=False),
            sa.Column('synced_at', bot.db.types.UTCDateTime(timezone=True), nullable=True),
            sa.Column('finished_at', bot.db.types.UTCDateTime(timezone=True), nullable=True),
            sa.Index('ix_broadcast_task_msgid', 'msgid')]
    if with_store:
        cols.insert(4, sa.Column('store_code', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False,
                                 server_default=''))
    return sa.Table('broadcast_task', sa.MetaData(), *cols)


def upgrade() -> None:
    with op.batch_alter_table('store') as b:
        b.add_column(sa.Column('closed_at', bot.db.types.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table('group_chat') as b:
        b.add_column(sa.Column('dismissed_at', bot.db.types.UTCDateTime(timezone=True), nullable=True))
    store_code = sa.Column('store_code', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False,
                           server_default='')
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table('broadcast_task', copy_from=_table(False), recreate='always') as b:
            b.add_column(store_code)
            b.create_unique_constraint(NEW_NAME, NEW_UQ)
    else:
        op.add_column('broadcast_task', store_code)
        op.drop_constraint('broadcast_task_day_slot_sender_key', 'broadcast_task', type_='unique')
        op.create_unique_constraint(NEW_NAME, 'broadcast_task', NEW_UQ)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table('broadcast_task', copy_from=_table(True), recreate='always') as b:
            b.drop_column('store_code')
            b.create_unique_constraint('broadcast_task_day_slot_sender_key', OLD_UQ)
    else:
        op.drop_constraint(NEW_NAME, 'broadcast_task', type_='unique')
        op.drop_column('broadcast_task', 'store_code')
        op.create_unique_constraint('broadcast_task_day_slot_sender_key', 'broadcast_task', OLD_UQ)
    with op.batch_alter_table('group_chat') as b:
        b.drop_column('dismissed_at')
    with op.batch_alter_table('store') as b:
        b.drop_column('closed_at')
