"""The `index_builds` table: what each index version was built from (manifest) and how the build went.

Registry versions (kind "index") hold the spec; this table holds the per-file manifest and build
statistics, which can be large, so the gateway's in-memory catalog never loads them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway.db.models import Base


class IndexBuild(Base):
    __tablename__ = "index_builds"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_index_build_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64))
    collection: Mapped[str] = mapped_column(String(512))
    manifest: Mapped[list[Any]] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))


def build_of(session: Session, name: str, version: int) -> IndexBuild | None:
    return session.scalars(
        select(IndexBuild).where(IndexBuild.name == name, IndexBuild.version == version)
    ).first()


def builds(session: Session, name: str | None = None) -> list[IndexBuild]:
    q = select(IndexBuild).order_by(IndexBuild.name, IndexBuild.version)
    if name:
        q = q.where(IndexBuild.name == name)
    return list(session.scalars(q))
