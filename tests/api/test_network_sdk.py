"""The network service through openstacksdk (conn.network.*) and, for the
error bodies, raw HTTP; against a started stackbox (SQLite and PostgreSQL)."""

from __future__ import annotations

import concurrent.futures
import ipaddress

import pytest
import requests
from openstack import exceptions


@pytest.fixture
def net(demo, unique):
    n = demo.network.create_network(name=unique("sdk"))
    s = demo.network.create_subnet(network_id=n.id, ip_version=4, cidr="10.80.0.0/24",
                                   name=unique("sdk-sub"))
    yield n, s
    for p in demo.network.ports(network_id=n.id):
        if p.device_owner != "network:dhcp":
            demo.network.delete_port(p)
    demo.network.delete_network(n, ignore_missing=True)


def _neutron(cloud, method, path, token, **kw):
    url = f"http://127.0.0.1:{cloud.ports['network']}/v2.0{path}"
    return requests.request(method, url, headers={"X-Auth-Token": token}, timeout=30, **kw)


def test_versions_and_extensions(cloud, admin):
    r = requests.get(f"http://127.0.0.1:{cloud.ports['network']}/", timeout=10)
    assert r.status_code == 200 and r.json()["versions"][0]["id"] == "v2.0"
    aliases = {e.alias for e in admin.network.extensions()}
    assert {"router", "external-net", "extraroute-atomic", "security-group", "quotas",
            "provider", "binding", "port-security", "standard-attr-tag"} <= aliases
    assert "dvr" not in aliases and "l3-ha" not in aliases
    assert admin.network.find_extension("router").alias == "router"
    assert admin.network.find_extension("qos") is None


def test_crud_filters_and_pages(demo, net, unique):
    n, s = net
    assert s.gateway_ip == "10.80.0.1" and s.allocation_pools == [
        {"start": "10.80.0.2", "end": "10.80.0.254"}]
    ports = [demo.network.create_port(network_id=n.id, name=f"p{i}") for i in range(5)]
    ips = [p.fixed_ips[0]["ip_address"] for p in ports]
    assert len(set(ips)) == 5
    found = list(demo.network.ports(network_id=n.id, name="p3"))
    assert [p.id for p in found] == [ports[3].id]
    by_ip = list(demo.network.ports(fixed_ips=f"ip_address={ips[2]}"))
    assert [p.id for p in by_ip] == [ports[2].id]
    paged = list(demo.network.ports(network_id=n.id, device_owner="", limit=2,
                                    sort_key="name", sort_dir="desc"))
    assert [p.name for p in paged] == ["p4", "p3", "p2", "p1", "p0"]
    demo.network.update_port(ports[0], name="renamed", admin_state_up=False)
    got = demo.network.get_port(ports[0].id)
    assert got.name == "renamed" and got.is_admin_state_up is False
    assert got.revision_number == 1
    demo.network.set_tags(n, ["a", "b"])
    assert sorted(demo.network.get_network(n.id).tags) == ["a", "b"]
    assert [x.id for x in demo.network.networks(tags="a,b")] == [n.id]
    assert [x.id for x in demo.network.networks(any_tags="b", name=n.name)] == [n.id]
    updated = demo.network.update_subnet(s, dns_nameservers=["10.80.0.53"],
                                         gateway_ip=None)
    assert updated.dns_nameservers == ["10.80.0.53"] and updated.gateway_ip is None


def test_concurrent_port_creates(demo, net):
    n, _ = net

    def create(i):
        return demo.network.create_port(network_id=n.id, name=f"c{i}")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ports = list(pool.map(create, range(24)))
    ips = [p.fixed_ips[0]["ip_address"] for p in ports]
    assert len(set(ips)) == 24


def test_error_bodies_name_the_field(cloud, net):
    n, s = net
    token = cloud.token("demo", cloud.demo_password, "demo")
    cases = [
        ("POST", "/subnets", {"subnet": {"network_id": n.id, "ip_version": 4,
                                         "cidr": "10.80.0.0/25"}}, 400, "cidr"),
        ("POST", "/subnets", {"subnet": {"network_id": n.id, "ip_version": 4,
                                         "cidr": "10.81.0.0/24", "gateway_ip": "10.82.0.1"}},
         400, "gateway_ip"),
        ("POST", "/subnets", {"subnet": {"network_id": n.id, "ip_version": 4,
                                         "cidr": "10.83.0.0/24", "allocation_pools": [
                                             {"start": "10.83.0.2", "end": "10.84.0.9"}]}},
         400, "allocation_pool"),
        ("POST", "/ports", {"port": {"network_id": n.id, "colour": "red"}}, 400, "colour"),
        ("POST", "/ports", {"port": {"network_id": n.id, "admin_state_up": "maybe"}}, 400,
         "admin_state_up"),
        ("POST", "/networks", {"network": {"name": "x", "provider:network_type": "vlan"}},
         403, "provider:network_type"),
        ("POST", "/security-group-rules", {"security_group_rule": {
            "security_group_id": "nope", "direction": "sideways"}}, 400, "direction"),
        ("GET", "/networks?colour=red", None, 400, "colour"),
        ("GET", f"/networks/{'0' * 32}", None, 404, "could not be found"),
    ]
    for method, path, body, status, word in cases:
        r = _neutron(cloud, method, path, token, json=body)
        assert r.status_code == status, (path, body, r.text)
        err = r.json()["NeutronError"]
        assert set(err) == {"type", "message", "detail"}
        assert word in err["message"], (path, err)
    r = _neutron(cloud, "POST", "/ports", token, json={"port": {
        "network_id": n.id, "fixed_ips": [{"ip_address": s.gateway_ip}]}})
    assert r.status_code == 409 and r.json()["NeutronError"]["type"] == "IpAddressInUse"
    r = _neutron(cloud, "DELETE", f"/subnets/{s.id}", token)
    assert r.status_code == 204 or r.json()["NeutronError"]["type"] == "SubnetInUse"
    r = _neutron(cloud, "GET", "/networks", "bad-token")
    assert r.status_code == 401 and "NeutronError" in r.json()


def test_admin_attributes_and_vlan_range(admin, demo, unique):
    with pytest.raises(exceptions.BadRequestException) as e:
        admin.network.create_network(name=unique("v"), provider_network_type="vlan",
                                     provider_physical_network="public",
                                     provider_segmentation_id=4095)
    assert "provider:segmentation_id" in str(e.value)
    n = admin.network.create_network(name=unique("v"), provider_network_type="vlan",
                                     provider_physical_network="public",
                                     provider_segmentation_id=4094, is_shared=True)
    try:
        assert admin.network.get_network(n.id).provider_segmentation_id == 4094
        seen = demo.network.get_network(n.id)
        assert seen.provider_network_type is None and seen.provider_segmentation_id is None
        with pytest.raises(exceptions.ForbiddenException):
            demo.network.update_network(n, is_shared=False)
    finally:
        admin.network.delete_network(n)


def test_router_interfaces_and_extraroutes(demo, net, unique):
    n, s = net
    public = demo.network.find_network("public")
    r = demo.network.create_router(name=unique("r"),
                                   external_gateway_info={"network_id": public.id})
    try:
        assert r.external_gateway_info["external_fixed_ips"][0]["ip_address"].startswith(
            "172.24.4.")
        info = demo.network.add_interface_to_router(r, subnet_id=s.id)
        assert info["subnet_id"] == s.id
        iface = demo.network.get_port(info["port_id"])
        assert iface.device_owner == "network:router_interface"
        assert iface.fixed_ips[0]["ip_address"] == "10.80.0.1"
        r = demo.network.add_extra_routes_to_router(r, body={"router": {"routes": [
            {"destination": "10.90.0.0/16", "nexthop": "10.80.0.9"}]}})
        assert r.routes == [{"destination": "10.90.0.0/16", "nexthop": "10.80.0.9"}]
        r = demo.network.remove_extra_routes_from_router(r, body={"router": {"routes": [
            {"destination": "10.90.0.0/16", "nexthop": "10.80.0.9"}]}})
        assert r.routes == []
        with pytest.raises(exceptions.ConflictException):
            demo.network.delete_network(n)
        demo.network.remove_interface_from_router(r, subnet_id=s.id)
        with pytest.raises(exceptions.NotFoundException):
            demo.network.get_port(info["port_id"])
        with pytest.raises(exceptions.BadRequestException):
            demo.network.update_router(r, external_gateway_info={"network_id": n.id})
    finally:
        demo.network.delete_router(r)


def test_quota_details_and_security_groups(admin, demo, unique):
    project = demo.current_project_id
    details = admin.network.get_quota(project, details=True)
    assert details.networks["limit"] == 100 and details.networks["used"] >= 1
    sg = demo.network.create_security_group(name=unique("sg"))
    try:
        rule = demo.network.create_security_group_rule(
            security_group_id=sg.id, direction="ingress", protocol="udp",
            port_range_min=53, port_range_max=53, remote_ip_prefix="10.0.0.7/8")
        assert rule.remote_ip_prefix == "10.0.0.0/8"
        with pytest.raises(exceptions.BadRequestException):
            demo.network.create_security_group_rule(
                security_group_id=sg.id, direction="ingress", protocol="tcp",
                port_range_min=90, port_range_max=80)
        rules = list(demo.network.security_group_rules(security_group_id=sg.id))
        assert len(rules) == 3
        demo.network.delete_security_group_rule(rule)
        with pytest.raises(exceptions.ConflictException):
            demo.network.create_security_group(name="default")
    finally:
        demo.network.delete_security_group(sg)


def test_reader_can_look_but_not_change(cloud, admin, unique):
    import openstack
    name = unique("reader")
    project = admin.identity.find_project("demo")
    user = admin.identity.create_user(name=name, password="reader-pw", domain_id="default")
    reader_role = admin.identity.find_role("reader")
    admin.identity.assign_project_role_to_user(project, user, reader_role)
    conn = openstack.connect(auth_url=cloud.auth_url, username=name, password="reader-pw",
                             project_name="demo", user_domain_id="default",
                             project_domain_id="default", region_name="RegionOne")
    try:
        assert "private" in {n.name for n in conn.network.networks()}
        with pytest.raises(exceptions.ForbiddenException):
            conn.network.create_network(name=unique("nope"))
    finally:
        conn.close()
        admin.identity.delete_user(user)


def test_ipv6_slaac_and_external_network_ports(admin, demo, net, unique):
    n, _ = net
    v6 = demo.network.create_subnet(network_id=n.id, ip_version=6, cidr="fd00:80::/64",
                                    ipv6_address_mode="slaac", ipv6_ra_mode="slaac")
    assert v6.gateway_ip == "fd00:80::1"
    port = demo.network.create_port(network_id=n.id)
    b = [int(x, 16) for x in port.mac_address.split(":")]
    iid = bytes([b[0] ^ 2, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]])
    # the EUI-64 address from the MAC, as Neutron computes SLAAC addresses
    expected = str(ipaddress.ip_network("fd00:80::/64").network_address
                   + int.from_bytes(iid, "big"))
    assert expected in [ip["ip_address"] for ip in port.fixed_ips]
    assert any(ip["ip_address"].startswith("10.80.0.") for ip in port.fixed_ips)
    public = demo.network.find_network("public")
    with pytest.raises(exceptions.ForbiddenException):
        demo.network.create_port(network_id=public.id)
    fip = demo.network.create_ip(floating_network_id=public.id,
                                 floating_ip_address="172.24.4.200")
    try:
        assert fip.floating_ip_address == "172.24.4.200"
        with pytest.raises(exceptions.ConflictException):
            demo.network.create_ip(floating_network_id=public.id,
                                   floating_ip_address="172.24.4.200")
        with pytest.raises(exceptions.NotFoundException):
            demo.network.update_ip(fip, port_id=port.id)   # no router joins this subnet
    finally:
        demo.network.delete_ip(fip)
