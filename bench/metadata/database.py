"""The benchmark's database: one network with a /16 subnet (made through
the network service) and N servers, each with one port holding source
address FIRST + i, as `openstack server create` would have left them. The
rows are inserted in bulk through the services' own models (creating 10,000
ports one API call at a time takes minutes and measures something else:
bench/network/ipam.py).

The metadata server then finds each instance the production way:
stackbox.metadata.sources.Lookup -> network service (port by address) ->
compute service (server) -> network service (the server's ports).
"""

from __future__ import annotations

import base64
import ipaddress

from sqlalchemy import insert, select

from stackbox.common.config import Settings
from stackbox.common.db import Database, migrate, utcnow
from stackbox.common.http.context import RequestContext
from stackbox.compute.models import Server
from stackbox.compute.service import ComputeService
from stackbox.image.service import ImageService
from stackbox.image.drivers.local import LocalStore
from stackbox.network.models import IpAllocation, Network, Port
from stackbox.network.service import NetworkService

NETWORK_NAME = "bench-net"
PROJECT = "bench"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkKeyBenchmarkKeyBenchmarkKey00 bench"
USER_DATA = b"#cloud-config\nruncmd: [true]\n"


def server_id(index: int) -> str:
    return f"00000000-0000-4000-8000-{index:012x}"


def port_id(index: int) -> str:
    return f"00000000-0000-4000-9000-{index:012x}"


def mac(index: int) -> str:
    return "fa:16:3e:%02x:%02x:%02x" % ((index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF)


def create(url: str, *, cidr: str, first_ip: str, count: int, data_dir) -> str:
    """Fill a new database at `url`; returns the network id."""
    migrate(url)
    db = Database(url)
    try:
        net_svc = NetworkService(db, Settings())
        ctx = RequestContext(request_id="bench", project_id=PROJECT,
                             roles=("admin", "member", "reader"))
        net = net_svc.create_network(ctx, {"name": NETWORK_NAME})
        first = int(ipaddress.ip_address(first_ip))
        # The pool lies before the instances' addresses: the DHCP port
        # takes one of it, the instances hold theirs as fixed IPs.
        subnet = net_svc.create_subnet(ctx, {"network_id": net["id"], "cidr": cidr,
                                             "allocation_pools": [{
                                                 "start": str(ipaddress.ip_network(cidr)[2]),
                                                 "end": str(ipaddress.ip_address(first - 1))}]})
        now = utcnow()
        user_data = base64.b64encode(USER_DATA).decode()
        flavor = {"id": "1", "name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1,
                  "ephemeral": 0, "swap": 0, "extra_specs": {}}
        with db.transaction() as s:
            for start in range(0, count, 2000):
                idx = range(start, min(count, start + 2000))
                s.execute(insert(Port), [dict(
                    id=port_id(i), network_id=net["id"], project_id=PROJECT,
                    name="", mac_address=mac(i), admin_state_up=True, status="ACTIVE",
                    device_owner="compute:nova", device_id=server_id(i),
                    binding_host_id="bench-host", port_security_enabled=True,
                    allowed_address_pairs=[], dns_name=f"storm-{i}", description="",
                    tags=[], revision_number=1, created_at=now, updated_at=now)
                    for i in idx])
                s.execute(insert(IpAllocation), [dict(
                    network_id=net["id"], ip_address=str(ipaddress.ip_address(first + i)),
                    subnet_id=subnet["id"], port_id=port_id(i)) for i in idx])
                s.execute(insert(Server), [dict(
                    id=server_id(i), project_id=PROJECT, user_id="bench", name=f"storm-{i}",
                    hostname=f"storm-{i}", vm_state="active", power_state=1, task_args={},
                    flavor=flavor, image_id="", image_meta={}, key_name="bench",
                    key_data=KEY, user_data=user_data, metadata_={}, tags=[], networks=[],
                    security_groups=["default"], availability_zone="nova",
                    host_id="bench-host", reservation_id="r-bench", launch_index=0,
                    scheduler_hints={}, created_at=now, updated_at=now) for i in idx])
        return net["id"]
    finally:
        db.dispose()


def network_id(db: Database) -> str:
    with db.read() as s:
        return s.scalar(select(Network.id).where(Network.name == NETWORK_NAME))


def services(url: str, data_dir) -> tuple[ComputeService, NetworkService]:
    """The compute and network services as stackbox builds them."""
    settings = Settings()
    db = Database(url)
    network = NetworkService(db, settings)
    image = ImageService(db, settings, LocalStore(data_dir / "images"))
    return ComputeService(db, settings, image=image, network=network), network
