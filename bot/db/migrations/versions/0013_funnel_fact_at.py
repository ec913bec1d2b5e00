"""funnel_fact.at index: /admin counts today's facts of every store (issue 15)

Revision ID: 0013
Revises: 0012
"""
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_funnel_at', 'funnel_fact', ['at'])


def downgrade() -> None:
    op.drop_index('ix_funnel_at', table_name='funnel_fact')
