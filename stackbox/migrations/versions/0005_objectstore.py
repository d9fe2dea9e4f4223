"""objectstore

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 12:10:00
"""
from alembic import op
import sqlalchemy as sa
import stackbox.common.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('objectstore_accounts',
    sa.Column('account', sa.String(length=256), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('sysmeta', sa.JSON(), nullable=False),
    sa.Column('created_at', stackbox.common.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('account')
    )
    op.create_table('objectstore_containers',
    sa.Column('account', sa.String(length=256), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('sysmeta', sa.JSON(), nullable=False),
    sa.Column('object_count', sa.BigInteger(), nullable=False),
    sa.Column('bytes_used', sa.BigInteger(), nullable=False),
    sa.Column('put_timestamp', sa.String(length=16), nullable=False),
    sa.Column('created_at', stackbox.common.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('account', 'name')
    )
    op.create_table('objectstore_objects',
    sa.Column('account', sa.String(length=256), nullable=False),
    sa.Column('container', sa.String(length=256), nullable=False),
    sa.Column('name', sa.String(length=1024), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('etag', sa.String(length=64), nullable=False),
    sa.Column('content_type', sa.String(length=256), nullable=False),
    sa.Column('timestamp', sa.String(length=16), nullable=False),
    sa.Column('delete_at', sa.Integer(), nullable=True),
    sa.Column('slo', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('account', 'container', 'name')
    )
    op.create_index('ix_objectstore_objects_delete_at', 'objectstore_objects', ['delete_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_objectstore_objects_delete_at', table_name='objectstore_objects')
    op.drop_table('objectstore_objects')
    op.drop_table('objectstore_containers')
    op.drop_table('objectstore_accounts')
