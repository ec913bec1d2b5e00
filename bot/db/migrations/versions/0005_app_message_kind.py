"""outbox kind send → app_message (the kind now says what it sends)

Revision ID: 0005
Revises: 0004
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # rows queued before this version would otherwise find no executor
    op.execute("UPDATE outbox SET kind = 'app_message' WHERE kind = 'send'")


def downgrade() -> None:
    op.execute("UPDATE outbox SET kind = 'send' WHERE kind = 'app_message'")
