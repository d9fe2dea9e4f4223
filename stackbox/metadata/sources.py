"""Where the metadata service learns about an instance: (network, source IP)
-> port (network service) -> server (compute service) -> InstanceMetadata.
The config drive is built from the same InstanceMetadata (one builder, two
transports)."""

from __future__ import annotations

import base64
import dataclasses

from stackbox.common.errors import NotFound
from stackbox.compute.service import internal_context
from stackbox.metadata.content import InstanceMetadata, Interface


def instance_metadata(server, network=None) -> InstanceMetadata:
    interfaces = []
    if network is not None:
        for port in network.server_network_info(server.id):
            v4 = [f for f in port.get("fixed_ips", []) if f.get("ip_version") == 4]
            if not v4:
                continue
            fixed = v4[0]
            interfaces.append(Interface(
                port_id=port["port_id"], mac=port["mac_address"], network_id=port["network_id"],
                ip=fixed["ip_address"], cidr=fixed["cidr"], gateway=fixed.get("gateway_ip"),
                dns_nameservers=tuple(fixed.get("dns_nameservers") or ()),
                mtu=port.get("mtu") or 1500, floating_ip=port.get("floating_ip")))
    keys = ((server.key_name, server.key_data),) if server.key_name and server.key_data else ()
    return InstanceMetadata(
        uuid=server.id, name=server.name, hostname=server.hostname,
        project_id=server.project_id, availability_zone=server.availability_zone or "nova",
        launch_index=server.launch_index, reservation_id=server.reservation_id,
        instance_type=(server.flavor or {}).get("name", ""), image_id=server.image_id,
        public_keys=keys,
        user_data=base64.b64decode(server.user_data) if server.user_data else None,
        meta=tuple(sorted((server.metadata_ or {}).items())),
        security_groups=tuple(server.security_groups or ()), interfaces=tuple(interfaces))


class Lookup:
    """lookup(network_id, ip) for MetadataServer (runs in worker threads)."""

    def __init__(self, compute, network):
        self.compute = compute
        self.network = network

    def __call__(self, network_id: str, ip: str) -> InstanceMetadata | None:
        port = self.network.lookup_port_by_ip(network_id, ip)
        if port is None or not port.get("device_id"):
            return None
        try:
            server = self.compute.get_server(internal_context(), port["device_id"])
        except NotFound:
            return None
        meta = instance_metadata(server, self.network)
        if not port.get("floating_ips"):
            return meta
        # public-ipv4: the floating IP of the port the request came from
        address = port["floating_ips"][0]
        return dataclasses.replace(meta, interfaces=tuple(
            dataclasses.replace(i, floating_ip=address) if i.port_id == port["id"] else i
            for i in meta.interfaces))
