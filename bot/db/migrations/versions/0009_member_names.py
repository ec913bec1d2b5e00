"""group_member.name: the customer's name from groupchat/get need_name (churn lists it masked)

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('group_member') as batch:
        batch.add_column(sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('group_member') as batch:
        batch.drop_column('name')
