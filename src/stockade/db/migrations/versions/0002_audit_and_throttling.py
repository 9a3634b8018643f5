"""Audit events and sign-in throttling.

Revision ID: 0002
Revises: 0001
"""

from alembic import op  # noqa: F401

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    pass
