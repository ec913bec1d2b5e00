"""corp_tag: the ids of the corp customer tags the bot marks customers with (store tags, 已进群)

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import bot.db.types


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('corp_tag',
    sa.Column('group_name', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=False),
    sa.Column('tag_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('group_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_by_bot', sa.Boolean(), nullable=False),
    sa.Column('seen_at', bot.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('group_name', 'name')
    )


def downgrade() -> None:
    op.drop_table('corp_tag')
