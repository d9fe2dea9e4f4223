"""Object-store tables: the listings and counters. Object data and its
metadata live on the storage devices (diskfile.py); these rows exist so that
account and container listings are correct the moment a PUT returns and stay
an index range scan at millions of objects per container.

Names sort by their UTF-8 bytes in Swift. SQLite compares TEXT with memcmp on
UTF-8, which is that order; on PostgreSQL the name columns carry the "C"
collation (byte order, whatever the database's own locale is)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from stackbox.common.db import Base, UTCDateTime, utcnow


def Name(length: int) -> String:
    """A name column that sorts by bytes on every backend (listings, markers)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class Account(Base):
    """Only accounts with metadata or containers have a row; an account of a
    project is otherwise implicit (Swift's account autocreate)."""
    __tablename__ = "objectstore_accounts"
    account: Mapped[str] = mapped_column(Name(256), primary_key=True)
    # user metadata (lower-case names without the X-Account-Meta- prefix) and
    # system settings such as quota-bytes, kept apart
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sysmeta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Container(Base):
    __tablename__ = "objectstore_containers"
    account: Mapped[str] = mapped_column(Name(256), primary_key=True)
    name: Mapped[str] = mapped_column(Name(256), primary_key=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # read/write ACLs, versions location, quotas, tempurl keys
    sysmeta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    object_count: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_used: Mapped[int] = mapped_column(BigInteger, default=0)
    put_timestamp: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Object(Base):
    """One listing row per live object; the primary key is the listing index."""
    __tablename__ = "objectstore_objects"
    account: Mapped[str] = mapped_column(Name(256), primary_key=True)
    container: Mapped[str] = mapped_column(Name(256), primary_key=True)
    name: Mapped[str] = mapped_column(Name(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    etag: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(256))
    timestamp: Mapped[str] = mapped_column(String(16))    # X-Timestamp of the version
    # X-Delete-At (unix seconds) for the expirer and for hiding expired rows
    delete_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slo: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_objectstore_objects_delete_at", "delete_at"),)
