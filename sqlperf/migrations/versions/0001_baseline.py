"""Baseline: sqlperf's schema before any of its tables.

An empty revision that every later migration of sqlperf builds on. Upgrading to
it only creates ``sqlperf_alembic_version`` and records ``0001`` there.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade sqlperf's schema: nothing to create yet."""


def downgrade() -> None:
    """Downgrade sqlperf's schema: nothing to drop."""
