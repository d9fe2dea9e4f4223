"""Compute tables: flavors, keypairs, servers (desired and observed state),
compute hosts and their allocations, server groups, quotas, instance actions,
console tokens."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from stackbox.common.db import Base, UTCDateTime, utcnow


class Flavor(Base):
    __tablename__ = "compute_flavors"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram: Mapped[int] = mapped_column(Integer)           # MiB
    disk: Mapped[int] = mapped_column(Integer)          # GiB
    ephemeral: Mapped[int] = mapped_column(Integer, default=0)
    swap: Mapped[int] = mapped_column(Integer, default=0)   # MiB
    rxtx_factor: Mapped[float] = mapped_column(Float, default=1.0)
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    extra_specs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class FlavorAccess(Base):
    __tablename__ = "compute_flavor_access"
    flavor_id: Mapped[str] = mapped_column(
        ForeignKey("compute_flavors.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class KeyPair(Base):
    __tablename__ = "compute_keypairs"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(16), default="ssh")
    public_key: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ComputeHost(Base):
    """A compute host: a stable uuid from its data dir; the hostname is a label."""
    __tablename__ = "compute_hosts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    host_ip: Mapped[str] = mapped_column(String(64), default="127.0.0.1")
    availability_zone: Mapped[str] = mapped_column(String(255), default="nova")
    hypervisor_type: Mapped[str] = mapped_column(String(32), default="QEMU")
    hypervisor_version: Mapped[int] = mapped_column(Integer, default=0)
    driver: Mapped[str] = mapped_column(String(16), default="qemu")
    accel: Mapped[str] = mapped_column(String(8), default="tcg")
    architecture: Mapped[str] = mapped_column(String(16), default="x86_64")
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    disk_gb: Mapped[int] = mapped_column(Integer, default=0)
    cpu_allocation_ratio: Mapped[float] = mapped_column(Float, default=16.0)
    ram_allocation_ratio: Mapped[float] = mapped_column(Float, default=1.5)
    disk_allocation_ratio: Mapped[float] = mapped_column(Float, default=1.0)
    reserved_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    forced_down: Mapped[bool] = mapped_column(Boolean, default=False)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Server(Base):
    __tablename__ = "compute_servers"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Nova's vm_state (building, active, stopped, paused, suspended, resized, error,
    # deleted) and task_state (the pending operation the agent carries out)
    vm_state: Mapped[str] = mapped_column(String(16), default="building", index=True)
    task_state: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    power_state: Mapped[int] = mapped_column(Integer, default=0)
    # what the task needs beyond its name (reboot type, snapshot image id, new flavor, ...)
    task_args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    flavor: Mapped[dict[str, Any]] = mapped_column(JSON)       # a snapshot of the flavor
    old_flavor: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    image_id: Mapped[str] = mapped_column(String(36), default="")
    image_meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    key_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    key_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)   # base64 text
    config_drive: Mapped[bool] = mapped_column(Boolean, default=False)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    networks: Mapped[Any] = mapped_column(JSON, default=list)  # as requested
    security_groups: Mapped[list] = mapped_column(JSON, default=list)
    availability_zone: Mapped[str | None] = mapped_column(String(255), nullable=True)
    requested_az: Mapped[str | None] = mapped_column(String(255), nullable=True)
    host_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    reservation_id: Mapped[str] = mapped_column(String(16), default="")
    launch_index: Mapped[int] = mapped_column(Integer, default=0)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    locked_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    locked_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    fault: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    access_ipv4: Mapped[str] = mapped_column(String(64), default="")
    access_ipv6: Mapped[str] = mapped_column(String(64), default="")
    progress: Mapped[int] = mapped_column(Integer, default=0)
    scheduler_hints: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    launched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class Allocation(Base):
    """Placement: resources a server holds on a host (one row per server)."""
    __tablename__ = "compute_allocations"
    server_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host_id: Mapped[str] = mapped_column(
        ForeignKey("compute_hosts.id", ondelete="CASCADE"), index=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)


class ServerGroup(Base):
    __tablename__ = "compute_server_groups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(32))
    rules: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    members: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Quota(Base):
    __tablename__ = "compute_quotas"
    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource: Mapped[str] = mapped_column(String(64), primary_key=True)
    hard_limit: Mapped[int] = mapped_column(Integer)


class InstanceAction(Base):
    __tablename__ = "compute_instance_actions"
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    action: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(String(255), nullable=True)
    start_time: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # [{"event", "start_time", "finish_time", "result", "traceback", "host"}]
    events: Mapped[list] = mapped_column(JSON, default=list)


class ConsoleToken(Base):
    """One-time console tokens (compute/consoletokens.py): only a hash of the
    token is kept; times are unix seconds, as TokenRecord has them."""
    __tablename__ = "compute_console_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    server_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[dict[str, Any]] = mapped_column(JSON)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


__all__ = ["Flavor", "FlavorAccess", "KeyPair", "ComputeHost", "Server", "Allocation",
           "ServerGroup", "Quota", "InstanceAction", "ConsoleToken"]
