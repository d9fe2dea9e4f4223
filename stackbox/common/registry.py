"""Which stackbox processes run where: each API process and agent records a
heartbeat, and `stackbox status` reads them."""

from __future__ import annotations

import datetime as dt
import os
import socket

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, mapped_column

from stackbox.common.db import Base, Database, UTCDateTime, utcnow


class AgentRecord(Base):
    __tablename__ = "agents"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # "<binary>@<host>"
    binary: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(String(255))
    version: Mapped[str] = mapped_column(String(32))
    pid: Mapped[int]
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime())


def heartbeat(db: Database, *, binary: str, version: str, started_at: dt.datetime) -> None:
    host = socket.gethostname()
    with db.transaction() as s:
        rec = s.get(AgentRecord, f"{binary}@{host}")
        if rec is None:
            rec = AgentRecord(id=f"{binary}@{host}", binary=binary, host=host)
            s.add(rec)
        rec.version, rec.pid, rec.started_at, rec.last_seen = version, os.getpid(), started_at, utcnow()


def list_agents(db: Database) -> list[AgentRecord]:
    with db.read() as s:
        return list(s.scalars(select(AgentRecord).order_by(AgentRecord.id)))
