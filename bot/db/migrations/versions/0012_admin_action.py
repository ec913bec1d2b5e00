"""admin_action: the ops console's POST actions, who did what when (issue 15)

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import bot.db.types


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('admin_action',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', bot.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('userid', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('store_code', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('target', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_admin_action_store_at', 'admin_action', ['store_code', 'at'])


def downgrade() -> None:
    op.drop_index('ix_admin_action_store_at', table_name='admin_action')
    op.drop_table('admin_action')
