"""objectstore: names sort by bytes on PostgreSQL (the "C" collation on the
name columns), whatever locale the database was created with

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 21:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = [('objectstore_accounts', 'account', 256),
           ('objectstore_containers', 'account', 256),
           ('objectstore_containers', 'name', 256),
           ('objectstore_objects', 'account', 256),
           ('objectstore_objects', 'container', 256),
           ('objectstore_objects', 'name', 1024)]


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return      # SQLite compares TEXT with memcmp: byte order already
    for table, column, length in COLUMNS:
        op.alter_column(table, column, type_=sa.String(length, collation='C'),
                        existing_type=sa.String(length), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, column, length in COLUMNS:
        op.alter_column(table, column, type_=sa.String(length),
                        existing_type=sa.String(length, collation='C'),
                        existing_nullable=False)
