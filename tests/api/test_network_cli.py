"""The network service (Neutron v2.0) through the `openstack` CLI, against a
started stackbox (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest


def demo(cloud, *args, check=True):
    return cloud.openstack(*args, cloud="stackbox-demo", check=check)


def fails(cloud, *args, cloud_name="stackbox-demo", env=None) -> str:
    proc = cloud.openstack(*args, cloud=cloud_name, check=False, as_json=False, env=env)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


@pytest.fixture(scope="module")
def other(cloud):
    """A second project with a member user: (env for the CLI, project id)."""
    import uuid
    name = f"other-{uuid.uuid4().hex[:6]}"
    project = cloud.openstack("project", "create", name)
    cloud.openstack("user", "create", "--password", "secret-pw", "--project", name, name)
    cloud.openstack("role", "add", "--user", name, "--project", name, "member",
                    as_json=False)
    return cloud.user_env(name, "secret-pw", name), project["id"]


def as_other(cloud, other, *args, check=True):
    return cloud.openstack(*args, cloud=None, env=other[0], check=check)


def test_default_networks_exist(cloud):
    nets = {n["Name"]: n for n in demo(cloud, "network", "list")}
    assert {"public", "private"} <= set(nets)
    public = cloud.openstack("network", "show", "public")
    assert public["router:external"] is True and public["provider:network_type"] == "flat"
    assert public["provider:physical_network"] == "public"
    router = demo(cloud, "router", "show", "router1")
    assert router["external_gateway_info"]["network_id"] == public["id"]
    assert router["external_gateway_info"]["enable_snat"] is True
    assert router["interfaces_info"][0]["ip_address"] == "10.0.0.1"
    subnet = demo(cloud, "subnet", "show", "private-subnet")
    assert subnet["cidr"] == "10.0.0.0/26" and subnet["gateway_ip"] == "10.0.0.1"


def test_network_subnet_port(cloud, unique):
    name = unique("net")
    net = demo(cloud, "network", "create", "--tag", "blue", name)
    assert net["mtu"] == 1500 and net["tags"] == ["blue"] and net["status"] == "ACTIVE"
    assert "provider:network_type" not in net or net["provider:network_type"] is None
    sub = demo(cloud, "subnet", "create", "--network", name, "--subnet-range",
               "192.168.77.0/24", "--gateway", "none", "--dns-nameserver", "192.168.77.53",
               "--allocation-pool", "start=192.168.77.10,end=192.168.77.20",
               "--host-route", "destination=10.20.0.0/16,gateway=192.168.77.1",
               unique("sub"))
    assert sub["gateway_ip"] is None
    assert sub["allocation_pools"] == [{"start": "192.168.77.10", "end": "192.168.77.20"}]
    assert sub["dns_nameservers"] == ["192.168.77.53"]
    assert sub["host_routes"] == [{"destination": "10.20.0.0/16", "nexthop": "192.168.77.1"}]
    port = demo(cloud, "port", "create", "--network", name, "--fixed-ip",
                "ip-address=192.168.77.15", "--allowed-address", "ip-address=192.168.77.200",
                unique("port"))
    assert port["fixed_ips"][0]["ip_address"] == "192.168.77.15"
    assert port["mac_address"].startswith("fa:16:3e:")
    assert port["allowed_address_pairs"][0]["ip_address"] == "192.168.77.200"
    assert len(port["security_group_ids"]) == 1
    listed = demo(cloud, "port", "list", "--network", name)
    # the DHCP port took the first pool address
    assert sorted(p["Fixed IP Addresses"][0]["ip_address"] for p in listed) == [
        "192.168.77.10", "192.168.77.15"]
    assert [n["Name"] for n in demo(cloud, "network", "list", "--tags", "blue")] == [name]
    err = fails(cloud, "port", "create", "--network", name, "--fixed-ip",
                "ip-address=192.168.77.15", unique("dup"))
    assert "192.168.77.15 is in use" in err
    err = fails(cloud, "network", "delete", name)
    assert "ports still in use" in err
    cloud.openstack("port", "delete", port["id"], cloud="stackbox-demo", as_json=False)
    cloud.openstack("network", "delete", name, cloud="stackbox-demo", as_json=False)
    assert name not in [n["Name"] for n in demo(cloud, "network", "list")]


def test_subnet_bad_input(cloud, unique):
    name = unique("bad")
    demo(cloud, "network", "create", name)
    demo(cloud, "subnet", "create", "--network", name, "--subnet-range", "10.50.0.0/24",
         unique("s"))
    err = fails(cloud, "subnet", "create", "--network", name, "--subnet-range",
                "10.50.0.128/25", unique("s"))
    assert "overlaps with another subnet" in err
    err = fails(cloud, "subnet", "create", "--network", name, "--subnet-range",
                "10.51.0.0/24", "--gateway", "10.99.0.1", unique("s"))
    assert "gateway_ip" in err
    err = fails(cloud, "subnet", "create", "--network", name, "--subnet-range",
                "10.52.0.0/24", "--allocation-pool", "start=10.52.1.2,end=10.52.1.9",
                unique("s"))
    assert "allocation_pools" in err and "spans beyond" in err
    assert len(demo(cloud, "subnet", "list", "--network", name)) == 1


def test_router_routes_exactly(cloud, unique):
    name = unique("r")
    net = unique("rn")
    demo(cloud, "network", "create", net)
    sub = demo(cloud, "subnet", "create", "--network", net, "--subnet-range",
               "10.60.0.0/24", unique("rs"))
    demo(cloud, "router", "create", "--external-gateway", "public", "--disable-snat", name)
    r = demo(cloud, "router", "show", name)
    assert r["external_gateway_info"]["enable_snat"] is False
    cloud.openstack("router", "add", "subnet", name, sub["id"], cloud="stackbox-demo",
                    as_json=False)
    cloud.openstack("router", "set", "--route", "destination=172.31.0.0/16,gateway=10.60.0.5",
                    name, cloud="stackbox-demo", as_json=False)
    cloud.openstack("router", "set", "--route", "destination=172.30.0.0/16,gateway=10.60.0.6",
                    name, cloud="stackbox-demo", as_json=False)
    routes = demo(cloud, "router", "show", name)["routes"]
    assert sorted((x["destination"], x["nexthop"]) for x in routes) == [
        ("172.30.0.0/16", "10.60.0.6"), ("172.31.0.0/16", "10.60.0.5")]
    cloud.openstack("router", "set", "--no-route", "--route",
                    "destination=172.29.0.0/16,gateway=10.60.0.7", name,
                    cloud="stackbox-demo", as_json=False)
    routes = demo(cloud, "router", "show", name)["routes"]
    assert [(x["destination"], x["nexthop"]) for x in routes] == [("172.29.0.0/16",
                                                                    "10.60.0.7")]
    err = fails(cloud, "router", "set", "--route", "destination=172.28.0.0/16,gateway=8.8.8.8",
                name)
    assert "not connected with router" in err
    err = fails(cloud, "router", "remove", "subnet", name, sub["id"])
    assert "required by one or more routes" in err
    cloud.openstack("router", "set", "--no-route", name, cloud="stackbox-demo", as_json=False)
    assert demo(cloud, "router", "show", name)["routes"] == []
    err = fails(cloud, "router", "delete", name)
    assert "still has ports" in err
    cloud.openstack("router", "remove", "subnet", name, sub["id"], cloud="stackbox-demo",
                    as_json=False)
    cloud.openstack("router", "delete", name, cloud="stackbox-demo", as_json=False)


def test_floating_ip_and_security_groups(cloud, unique):
    port = demo(cloud, "port", "create", "--network", "private", unique("fp"))
    fip = demo(cloud, "floating", "ip", "create", "public")
    assert fip["status"] == "DOWN" and fip["floating_ip_address"].startswith("172.24.4.")
    cloud.openstack("floating", "ip", "set", "--port", port["id"],
                    fip["floating_ip_address"], cloud="stackbox-demo", as_json=False)
    shown = demo(cloud, "floating", "ip", "show", fip["id"])
    assert shown["port_id"] == port["id"] and shown["status"] == "ACTIVE"
    assert shown["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
    assert shown["router_id"] == demo(cloud, "router", "show", "router1")["id"]
    cloud.openstack("floating", "ip", "unset", "--port", fip["floating_ip_address"],
                    cloud="stackbox-demo", as_json=False)
    assert demo(cloud, "floating", "ip", "show", fip["id"])["port_id"] is None
    cloud.openstack("floating", "ip", "delete", fip["id"], cloud="stackbox-demo",
                    as_json=False)

    sg = demo(cloud, "security", "group", "create", unique("web"))
    assert {r["direction"] for r in sg["rules"]} == {"egress"}
    rule = demo(cloud, "security", "group", "rule", "create", "--protocol", "tcp",
                "--dst-port", "80:81", "--remote-ip", "192.0.2.0/24", sg["id"])
    assert (rule["port_range_min"], rule["port_range_max"]) == (80, 81)
    demo(cloud, "security", "group", "rule", "create", "--protocol", "icmp",
         "--remote-group", sg["id"], "--ethertype", "IPv6", sg["id"])
    err = fails(cloud, "security", "group", "rule", "create", "--protocol", "tcp",
                "--dst-port", "80:81", "--remote-ip", "192.0.2.0/24", sg["id"])
    assert "already exists" in err
    cloud.openstack("port", "set", "--security-group", sg["id"], port["id"],
                    cloud="stackbox-demo", as_json=False)
    assert sg["id"] in demo(cloud, "port", "show", port["id"])["security_group_ids"]
    err = fails(cloud, "security", "group", "delete", sg["id"])
    assert "in use" in err
    default = [g for g in demo(cloud, "security", "group", "list") if g["Name"] == "default"]
    assert len(default) == 1
    rules = demo(cloud, "security", "group", "rule", "list", default[0]["ID"])
    assert len(rules) == 4
    cloud.openstack("port", "delete", port["id"], cloud="stackbox-demo", as_json=False)
    cloud.openstack("security", "group", "delete", sg["id"], cloud="stackbox-demo",
                    as_json=False)


def test_provider_networks_admin_only(cloud, unique):
    name = unique("vlan")
    net = cloud.openstack("network", "create", "--provider-network-type", "vlan",
                          "--provider-physical-network", "public", "--provider-segment",
                          "100", "--share", name)
    assert net["provider:segmentation_id"] == 100 and net["shared"] is True
    seen = demo(cloud, "network", "show", name)
    assert seen.get("provider:network_type") is None
    assert seen.get("provider:segmentation_id") is None
    err = fails(cloud, "network", "create", "--provider-network-type", "vlan",
                "--provider-physical-network", "public", "--provider-segment", "100",
                unique("v"), cloud_name="stackbox")
    assert "in use" in err
    err = fails(cloud, "network", "create", "--provider-network-type", "vlan",
                "--provider-physical-network", "public", "--provider-segment", "5000",
                unique("v"), cloud_name="stackbox")
    assert "provider:segmentation_id" in err and "4094" in err
    err = fails(cloud, "network", "create", "--provider-network-type", "flat",
                "--provider-physical-network", "nowhere", unique("v"), cloud_name="stackbox")
    assert "bridge_mappings" in err and "nowhere" in err
    err = fails(cloud, "network", "create", "--provider-network-type", "flat",
                "--provider-physical-network", "public", unique("v"))
    assert "disallowed by policy" in err
    cloud.openstack("network", "delete", name, as_json=False)


def test_projects_are_isolated(cloud, other, unique):
    assert "private" not in [n["Name"] for n in as_other(cloud, other, "network", "list")]
    private = demo(cloud, "network", "show", "private")
    proc = cloud.openstack("port", "create", "--network", private["id"], unique("x"),
                           cloud=None, env=other[0], check=False, as_json=False)
    assert proc.returncode != 0 and "No Network found" in proc.stderr
    shared = unique("shared")
    demo(cloud, "network", "create", shared)
    demo(cloud, "subnet", "create", "--network", shared, "--subnet-range", "10.70.0.0/24",
         unique("s"))
    assert shared not in [n["Name"] for n in as_other(cloud, other, "network", "list")]
    cloud.openstack("network", "set", "--share", shared, as_json=False)
    port = as_other(cloud, other, "port", "create", "--network", shared, unique("p"))
    assert port["project_id"] == other[1]
    proc = cloud.openstack("network", "set", "--no-share", shared, check=False, as_json=False)
    assert proc.returncode != 0 and "Multiple tenants" in proc.stderr
    cloud.openstack("port", "delete", port["id"], cloud=None, env=other[0], as_json=False)


def test_quotas(cloud, other, unique):
    cloud.openstack("quota", "set", "--networks", "1", "--ports", "7", other[1], as_json=False)
    shown = cloud.openstack("quota", "show", "--network", other[1])
    limits = {r["Resource"]: r["Limit"] for r in shown} if isinstance(shown, list) else shown
    assert limits["networks"] == 1 and limits["ports"] == 7
    as_other(cloud, other, "network", "create", unique("q1"))
    proc = cloud.openstack("network", "create", unique("q2"), cloud=None, env=other[0],
                           check=False, as_json=False)
    assert proc.returncode != 0 and "Quota exceeded for network" in proc.stderr
