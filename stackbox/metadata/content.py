"""What the metadata service serves: pure functions instance -> documents.

The documents come from the same builder as the config drive
(`stackbox.guest.configdrive`), so a guest sees the same bytes whichever way
it reads them. This module only adds the HTTP view: the EC2 tree with its
directory listings, the OpenStack version lists, and which paths exist for
which version.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from dataclasses import dataclass, field

from stackbox.guest import configdrive

OPENSTACK_VERSIONS = (*configdrive.OPENSTACK_VERSIONS, configdrive.LATEST)
# EC2 API versions served; `mac` and `network/` appeared in 2011-01-01, so
# 2009-04-04 (cloud-init's EC2 minimum) does not have them.
EC2_VERSIONS = ("2009-04-04", "latest")
_EC2_AFTER_2009 = ("mac", "network")

# The version cloud-init 22.x picks from /openstack.
CLOUD_INIT_OPENSTACK_VERSION = "2018-08-27"


@dataclass(frozen=True)
class Interface:
    """One port of the instance, as the guest should see it."""
    port_id: str
    mac: str
    network_id: str
    ip: str
    cidr: str                                  # the subnet, "10.0.0.0/24"
    gateway: str | None = None
    dns_nameservers: tuple[str, ...] = ()
    mtu: int = 1500
    floating_ip: str | None = None


@dataclass(frozen=True)
class InstanceMetadata:
    """Everything the metadata service knows about one instance.

    `interfaces` are in device order (the first is the EC2 "primary").
    `network_data`: None builds it from `interfaces`; {} serves none (404)."""
    uuid: str
    name: str
    hostname: str
    project_id: str
    availability_zone: str = "nova"
    launch_index: int = 0
    reservation_id: str = ""
    instance_type: str = ""
    image_id: str = ""
    public_keys: tuple[tuple[str, str], ...] = ()      # (key name, openssh public key)
    user_data: bytes | None = None
    meta: tuple[tuple[str, str], ...] = ()             # server properties (`openstack server set --property`)
    security_groups: tuple[str, ...] = ()              # names
    interfaces: tuple[Interface, ...] = ()
    network_data: dict | None = None
    vendor_data: dict | None = None
    devices: tuple[dict, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)   # reserved for later fields

    @property
    def ec2_id(self) -> str:
        # Nova derives i-%08x from an integer id; ours is the uuid's first
        # 32 bits: stable, and still looks like an EC2 id to tools.
        return f"i-{self.uuid.replace('-', '')[:8]}"


def meta_data(instance: InstanceMetadata, *, random_seed: bytes | None = None) -> dict:
    """The OpenStack meta_data.json document (nova's field names)."""
    keys = dict(instance.public_keys)
    seed = random_seed if random_seed is not None else os.urandom(512)
    return {
        "uuid": instance.uuid,
        "name": instance.name,
        "hostname": instance.hostname,
        "launch_index": instance.launch_index,
        "availability_zone": instance.availability_zone,
        "project_id": instance.project_id,
        "meta": dict(instance.meta),
        "public_keys": keys,
        "keys": [{"name": n, "type": "ssh", "data": k} for n, k in sorted(keys.items())],
        "random_seed": base64.b64encode(seed).decode(),
        "devices": list(instance.devices),
    }


def network_data(instance: InstanceMetadata) -> dict:
    """network_data.json from the instance's interfaces: the links carry the
    guest's real MACs (cloud-init matches NICs by MAC and gives up on a
    mismatch), the networks say static or DHCP like nova does."""
    links, networks, dns = [], [], []
    for i, iface in enumerate(instance.interfaces):
        link_id = f"tap{iface.port_id[:11]}"
        links.append({"id": link_id, "vif_id": iface.port_id, "type": "ovs",
                      "ethernet_mac_address": iface.mac, "mtu": iface.mtu})
        net = ipaddress.ip_network(iface.cidr, strict=False)
        routes = []
        if iface.gateway:
            routes.append({"network": "0.0.0.0", "netmask": "0.0.0.0",
                           "gateway": iface.gateway})
        networks.append({
            "id": f"network{i}", "link": link_id, "network_id": iface.network_id,
            "type": "ipv4_dhcp" if net.version == 4 else "ipv6_dhcp",
            "ip_address": iface.ip, "netmask": str(net.netmask), "routes": routes,
            "services": [{"type": "dns", "address": a} for a in iface.dns_nameservers]})
        dns.extend(a for a in iface.dns_nameservers if a not in dns)
    return {"links": links, "networks": networks,
            "services": [{"type": "dns", "address": a} for a in dns]}


def ec2_extra(instance: InstanceMetadata) -> dict:
    """EC2-only facts (kept out of meta_data.json)."""
    doc: dict = {
        "ami-id": instance.image_id or "ami-00000001",
        "instance-id": instance.ec2_id,
        "instance-type": instance.instance_type,
        "reservation-id": instance.reservation_id or f"r-{instance.uuid.replace('-', '')[8:16]}",
        "security-groups": list(instance.security_groups),
        "block-device-mapping": {"ami": "vda", "root": "/dev/vda"},
    }
    if not instance.interfaces:
        return doc
    first = instance.interfaces[0]
    doc["local-ipv4"] = first.ip
    if first.floating_ip:
        doc["public-ipv4"] = first.floating_ip
    doc["mac"] = first.mac
    macs = {}
    for number, iface in enumerate(instance.interfaces):
        entry = {"device-number": str(number), "interface-id": iface.port_id,
                 "local-hostname": instance.hostname, "local-ipv4s": iface.ip,
                 "mac": iface.mac, "security-groups": list(instance.security_groups),
                 "subnet-ipv4-cidr-block": iface.cidr}
        if iface.floating_ip:
            entry["public-ipv4s"] = iface.floating_ip
        macs[iface.mac] = entry
    doc["network"] = {"interfaces": {"macs": macs}}
    return doc


def _listing(entries) -> bytes:
    return "\n".join(entries).encode()


def _leaf(value) -> bytes:
    if isinstance(value, (list, tuple)):
        return _listing(str(v) for v in value)
    return str(value).encode()


def _ec2_tree(prefix: str, node: dict, out: dict[str, bytes]) -> None:
    """Flatten the EC2 document into path -> body, listings included.
    A directory's entries end in `/`; `public-keys/` lists `0=name`."""
    entries = []
    for key in sorted(node):
        value = node[key]
        if key == "_name":
            continue
        path = f"{prefix}/{key}"
        if isinstance(value, dict):
            entries.append(value.get("_name") or f"{key}/")
            _ec2_tree(path, value, out)
        else:
            entries.append(key)
            out[path] = _leaf(value)
    out[prefix] = _listing(entries)


@dataclass(frozen=True)
class Documents:
    """Every path the instance may GET (no leading or trailing slash) and
    its body; directory listings are paths too."""
    paths: dict[str, bytes]

    def get(self, path: str) -> bytes | None:
        return self.paths.get(normalize(path))


def normalize(path: str) -> str:
    """'/latest//meta-data/?x=1' -> 'latest/meta-data'."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    return "/".join(p for p in path.split("/") if p)


def build(instance: InstanceMetadata, *, random_seed: bytes | None = None) -> Documents:
    md = meta_data(instance, random_seed=random_seed)
    if instance.network_data is None:
        net = network_data(instance) if instance.interfaces else None
    else:
        net = instance.network_data or None
    extra = ec2_extra(instance)
    files = configdrive.openstack_layout(md, instance.user_data, net, instance.vendor_data,
                                         ec2_extra=extra)
    paths: dict[str, bytes] = {}
    by_version: dict[str, list[str]] = {}
    for rel, body in files.items():
        if rel.startswith("openstack/"):
            paths[rel] = body
            _, version, name = rel.split("/", 2)
            by_version.setdefault(version, []).append(name)
    for version, names in by_version.items():
        paths[f"openstack/{version}"] = _listing(sorted(names))
    paths["openstack"] = _listing(OPENSTACK_VERSIONS)

    ec2 = configdrive.ec2_meta_data(md, extra)
    for version in EC2_VERSIONS:
        doc = ec2 if version == "latest" else {
            k: v for k, v in ec2.items() if k not in _EC2_AFTER_2009}
        _ec2_tree(f"{version}/meta-data", doc, paths)
        top = ["meta-data"]
        if instance.user_data is not None:
            paths[f"{version}/user-data"] = bytes(instance.user_data)
            top.append("user-data")
        paths[version] = _listing(top)
    paths[""] = _listing(EC2_VERSIONS)
    return Documents(paths)


def cloud_init_paths(docs: Documents) -> list[str]:
    """The GETs cloud-init 22.4's OpenStack datasource makes, in order
    (measured: /openstack twice, the 2018-08-27 files, then a walk of the
    EC2 tree under /latest/meta-data/ following each listing)."""
    v = CLOUD_INIT_OPENSTACK_VERSION
    seq = ["/openstack", "/openstack"]
    seq += [f"/openstack/{v}/{name}" for name in
            ("meta_data.json", "user_data", "vendor_data.json", "vendor_data2.json",
             "network_data.json")]

    def walk(url: str) -> None:
        seq.append(url)
        body = docs.get(url)
        for entry in (body or b"").decode().splitlines():
            if "=" in entry:                       # public-keys: "0=name" -> 0/
                entry = entry.split("=", 1)[0] + "/"
            if entry.endswith("/"):
                walk(url + entry)
            else:
                seq.append(url + entry)
    walk("/latest/meta-data/")
    return seq
