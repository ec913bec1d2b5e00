"""wecom_rate: calls per WeCom API per minute and per hour, counted by every process (issue 16)

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('wecom_rate',
    sa.Column('corp_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('endpoint', sqlmodel.sql.sqltypes.AutoString(length=120), nullable=False),
    sa.Column('window_seconds', sa.Integer(), nullable=False),
    sa.Column('window_start', sa.BigInteger(), nullable=False),
    sa.Column('calls', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('corp_id', 'endpoint', 'window_seconds', 'window_start')
    )


def downgrade() -> None:
    op.drop_table('wecom_rate')
